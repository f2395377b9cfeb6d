//! OTLP export, end to end: a real OTLP receiver in this process (the collector `TraceService` and
//! `MetricsService` from `opentelemetry-proto`, served with tonic over gRPC, and the same messages
//! over OTLP/HTTP protobuf on `/v1/traces` and `/v1/metrics`), and the `nats_producer` and
//! `nats_consumer` example programs run as two separate processes pointed at it through
//! `OTEL_EXPORTER_OTLP_ENDPOINT`. The received protobuf must carry the producer's `publish` spans,
//! the consumer's `process` spans (new traces) whose links name those producer spans byte for byte,
//! each process's `OTEL_SERVICE_NAME`, and the metrics of both processes. Nothing is polled after
//! the processes exit: an exporter only gets its answer once the receiver stored the request, so a
//! span missing here was lost at shutdown.
//!
//! Needs the NATS server at `NATS_URL` (default `nats://127.0.0.1:4222`, JetStream enabled) and
//! fails when it is missing. The example binaries come from `target/<profile>/examples/`; when
//! they are missing or older than the sources, this test builds them with the same profile,
//! target directory and features as itself (`cargo build --example ...`), since
//! `cargo test --test otlp_export` does not build examples.

use std::convert::Infallible;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tower::ServiceExt;

/// Messages published and consumed per run.
const COUNT: usize = 2;
/// How long one example process may take.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Grpc,
    HttpProtobuf,
}

impl Transport {
    /// The `OTEL_EXPORTER_OTLP_PROTOCOL` value.
    fn protocol(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Everything the receiver got, with the transport each request came over.
#[derive(Clone, Default)]
struct Received {
    traces: Arc<Mutex<Vec<(Transport, ExportTraceServiceRequest)>>>,
    metrics: Arc<Mutex<Vec<(Transport, ExportMetricsServiceRequest)>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces
            .lock()
            .unwrap()
            .push((Transport::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics
            .lock()
            .unwrap()
            .push((Transport::Grpc, request.into_inner()));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the receiver on a free loopback port: HTTP/2 gRPC (tonic's generated services) and
/// HTTP/1.1 OTLP/HTTP protobuf on the same port. Returns the endpoint URL.
async fn start_receiver(received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let received = received.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request| route(request, received.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

async fn route(
    request: Request<Incoming>,
    received: Received,
) -> Result<Response<tonic::body::Body>, Infallible> {
    let path = request.uri().path().to_owned();
    match path.as_str() {
        "/v1/traces" => {
            let (status, body) = match decode::<ExportTraceServiceRequest>(request).await {
                Ok(message) => {
                    received
                        .traces
                        .lock()
                        .unwrap()
                        .push((Transport::HttpProtobuf, message));
                    (
                        StatusCode::OK,
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(error) => (StatusCode::BAD_REQUEST, error.into_bytes()),
            };
            Ok(protobuf_response(status, body))
        }
        "/v1/metrics" => {
            let (status, body) = match decode::<ExportMetricsServiceRequest>(request).await {
                Ok(message) => {
                    received
                        .metrics
                        .lock()
                        .unwrap()
                        .push((Transport::HttpProtobuf, message));
                    (
                        StatusCode::OK,
                        ExportMetricsServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(error) => (StatusCode::BAD_REQUEST, error.into_bytes()),
            };
            Ok(protobuf_response(status, body))
        }
        p if p.starts_with("/opentelemetry.proto.collector.trace.v1.TraceService/") => {
            TraceServiceServer::new(received).oneshot(request).await
        }
        p if p.starts_with("/opentelemetry.proto.collector.metrics.v1.MetricsService/") => {
            MetricsServiceServer::new(received).oneshot(request).await
        }
        _ => Ok(protobuf_response(StatusCode::NOT_FOUND, Vec::new())),
    }
}

async fn decode<M: Message + Default>(request: Request<Incoming>) -> Result<M, String> {
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    M::decode(body).map_err(|e| e.to_string())
}

fn protobuf_response(status: StatusCode, body: Vec<u8>) -> Response<tonic::body::Body> {
    let mut response = Response::new(tonic::body::Body::new(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

/// `target/<profile>/examples/`, with `nats_producer` and `nats_consumer` built for the profile,
/// target directory and features of this test binary (once per test process).
fn examples_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(build_examples).clone()
}

fn build_examples() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/otlp_export-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary not in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("no target directory");
    let profile = profile_dir.file_name().unwrap().to_str().unwrap();
    let dir = profile_dir.join("examples");
    let binaries = EXAMPLES.map(|name| dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)));
    // Built by this very `cargo test` (a whole-workspace run builds examples) or later: use them
    // as they are. A nested build here would resolve features for this package alone, which can
    // differ from a `--workspace` build and recompile much of the tree.
    let oldest_binary = binaries.iter().map(|b| modified(b)).min().flatten();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if oldest_binary.is_some_and(|built| newest_source(root).is_none_or(|source| source <= built)) {
        return dir;
    }
    let mut features = vec!["nats"];
    for (enabled, feature) in [
        (cfg!(feature = "kafka"), "kafka"),
        (cfg!(feature = "amqp"), "amqp"),
        (cfg!(feature = "sqs"), "sqs"),
    ] {
        if enabled {
            features.push(feature);
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "-p", "tracelink"])
        .args(["--example", EXAMPLES[0], "--example", EXAMPLES[1]])
        .args(["--features", &features.join(",")])
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let output = build
        .output()
        .expect("cannot run cargo to build the examples");
    assert!(
        output.status.success(),
        "building the nats examples failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for bin in &binaries {
        assert!(bin.is_file(), "example binary {} is missing", bin.display());
    }
    dir
}

/// The examples this test runs.
const EXAMPLES: [&str; 2] = ["nats_producer", "nats_consumer"];

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// The newest modification time of what the examples are built from: manifests, the lock file,
/// and the Rust sources of the facade, the examples and the crates.
fn newest_source(root: &Path) -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if path.extension().is_some_and(|e| e == "rs" || e == "toml") {
                *newest = (*newest).max(modified(&path));
            }
        }
    }
    let mut newest = modified(&root.join("Cargo.lock")).max(modified(&root.join("Cargo.toml")));
    walk(&root.join("src"), &mut newest);
    walk(&root.join("examples"), &mut newest);
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        for krate in crates.flatten() {
            newest = newest.max(modified(&krate.path().join("Cargo.toml")));
            walk(&krate.path().join("src"), &mut newest);
        }
    }
    newest
}

/// The exit status and output of one example process, killed after [`PROCESS_TIMEOUT`].
async fn run_example(
    dir: &Path,
    name: &str,
    args: &[&str],
    endpoint: &str,
    transport: Transport,
    service: &str,
) -> String {
    let mut command = Command::new(dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX)));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let mut child: Child = command
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", transport.protocol())
        .env("OTEL_SERVICE_NAME", service)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} did not exit within {PROCESS_TIMEOUT:?}: {}",
                output_of(&mut child)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let output = output_of(&mut child);
    assert!(status.success(), "{name} failed ({status}): {output}");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    stdout
}

fn output_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    format!("stderr:\n{stderr}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of `key=` in a printed line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn service_name(resource: Option<&Resource>) -> Option<String> {
    resource?
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// Every span the receiver got from `service`, checking the transport each came over.
fn spans_of(received: &Received, service: &str, transport: Transport) -> Vec<Span> {
    let traces = received.traces.lock().unwrap();
    let mut spans = Vec::new();
    for (via, request) in traces.iter() {
        for resource_spans in &request.resource_spans {
            if service_name(resource_spans.resource.as_ref()).as_deref() != Some(service) {
                continue;
            }
            assert_eq!(*via, transport, "spans of {service} came over {via:?}");
            for scope_spans in &resource_spans.scope_spans {
                spans.extend(scope_spans.spans.iter().cloned());
            }
        }
    }
    spans
}

/// The metric names the receiver got from `service`.
fn metric_names_of(received: &Received, service: &str, transport: Transport) -> Vec<String> {
    let metrics = received.metrics.lock().unwrap();
    let mut names = Vec::new();
    for (via, request) in metrics.iter() {
        for resource_metrics in &request.resource_metrics {
            if service_name(resource_metrics.resource.as_ref()).as_deref() != Some(service) {
                continue;
            }
            assert_eq!(*via, transport, "metrics of {service} came over {via:?}");
            for scope_metrics in &resource_metrics.scope_metrics {
                names.extend(scope_metrics.metrics.iter().map(|m| m.name.clone()));
            }
        }
    }
    names
}

async fn producer_and_consumer_export_linked_spans(transport: Transport) {
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = tracelink::nats::async_nats::connect(nats_url.as_str())
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {nats_url} (set NATS_URL): {e}"));
    let dir = examples_dir();

    let received = Received::default();
    let endpoint = start_receiver(received.clone()).await;
    let unique = format!(
        "{}_{}_{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        transport.protocol().replace('/', "_")
    );
    let subject = format!("otlp.export.{unique}");
    let stream = format!("OTLP_EXPORT_{unique}");
    let producer_service = format!("otlp-test-producer-{unique}");
    let consumer_service = format!("otlp-test-consumer-{unique}");
    let count = COUNT.to_string();
    let args = [
        "--url",
        nats_url.as_str(),
        "--subject",
        subject.as_str(),
        "--count",
        count.as_str(),
        "--jetstream",
        stream.as_str(),
    ];

    // JetStream keeps the messages, so the consumer can start after the producer exited.
    let sent = run_example(
        &dir,
        "nats_producer",
        &args,
        &endpoint,
        transport,
        &producer_service,
    )
    .await;
    let processed = run_example(
        &dir,
        "nats_consumer",
        &args,
        &endpoint,
        transport,
        &consumer_service,
    )
    .await;
    let _ = tracelink::nats::async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;

    // What the programs printed.
    let sent: Vec<(String, String)> = sent
        .lines()
        .filter(|l| l.starts_with("sent "))
        .map(|l| (field(l, "trace_id").into(), field(l, "span_id").into()))
        .collect();
    assert_eq!(sent.len(), COUNT, "producer output: {sent:?}");
    let processed: Vec<(String, String, String)> = processed
        .lines()
        .filter(|l| l.starts_with("processed "))
        .map(|l| {
            (
                field(l, "trace_id").into(),
                field(l, "span_id").into(),
                field(l, "link").into(),
            )
        })
        .collect();
    assert_eq!(processed.len(), COUNT, "consumer output: {processed:?}");

    // What arrived over OTLP: the producer spans...
    let producer_spans = spans_of(&received, &producer_service, transport);
    let publish_name = format!("publish {subject}");
    let publishes: Vec<&Span> = producer_spans
        .iter()
        .filter(|s| s.name == publish_name)
        .collect();
    assert_eq!(
        publishes.len(),
        COUNT,
        "{publish_name:?} spans from {producer_service}: {:?}",
        producer_spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for (span, (trace_id, span_id)) in publishes.iter().zip(&sent) {
        assert_eq!(span.kind, SpanKind::Producer as i32);
        assert_eq!(&hex(&span.trace_id), trace_id);
        assert_eq!(&hex(&span.span_id), span_id);
    }

    // ... and the consumer spans, in new traces, each linked to one producer span.
    let consumer_spans = spans_of(&received, &consumer_service, transport);
    let process_name = format!("process {subject}");
    let processes: Vec<&Span> = consumer_spans
        .iter()
        .filter(|s| s.name == process_name)
        .collect();
    assert_eq!(
        processes.len(),
        COUNT,
        "{process_name:?} spans from {consumer_service}: {:?}",
        consumer_spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    for (publish, (trace_id, span_id, link)) in publishes.iter().zip(&processed) {
        let process = processes
            .iter()
            .find(|s| &hex(&s.span_id) == span_id)
            .unwrap_or_else(|| panic!("no process span {span_id} received"));
        assert_eq!(process.kind, SpanKind::Consumer as i32);
        assert_eq!(&hex(&process.trace_id), trace_id);
        assert_ne!(
            process.trace_id, publish.trace_id,
            "the process span starts a new trace"
        );
        assert!(
            process.parent_span_id.is_empty(),
            "the process span is a root"
        );
        let links: Vec<_> = process
            .links
            .iter()
            .filter(|l| l.trace_id == publish.trace_id && l.span_id == publish.span_id)
            .collect();
        assert_eq!(
            links.len(),
            1,
            "process span {span_id} links to publish span {}: {:?}",
            hex(&publish.span_id),
            process.links
        );
        assert_eq!(
            link,
            &format!("{}-{}", hex(&publish.trace_id), hex(&publish.span_id))
        );
    }

    // Metrics from both processes.
    let producer_metrics = metric_names_of(&received, &producer_service, transport);
    assert!(
        producer_metrics
            .iter()
            .any(|m| m == "messaging.client.operation.duration"),
        "producer metrics: {producer_metrics:?}"
    );
    let consumer_metrics = metric_names_of(&received, &consumer_service, transport);
    assert!(
        consumer_metrics
            .iter()
            .any(|m| m == "messaging.process.duration"),
        "consumer metrics: {consumer_metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_carries_linked_producer_and_consumer_spans() {
    producer_and_consumer_export_linked_spans(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_carries_linked_producer_and_consumer_spans() {
    producer_and_consumer_export_linked_spans(Transport::HttpProtobuf).await;
}
