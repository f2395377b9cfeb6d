//! Shared by the integration tests: the broker address, a spawned `nats-server` for tests that
//! kill it, unique names, and span helpers over the SDK's in-memory exporter.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanKind;
use opentelemetry::Value;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracelink_core::{Instrumentation, InstrumentationBuilder};

/// The shared broker: `NATS_URL`, else the machine's server on 127.0.0.1:4222.
pub fn url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Connects to the shared broker, failing loudly when it is missing.
pub async fn connect() -> async_nats::Client {
    let url = url();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("no NATS server at {url} ({e}): start it with `eval \"$(scripts/services)\"`")
        })
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Spans go to an in-memory exporter, W3C trace context propagates.
pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

impl Telemetry {
    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    pub fn builder(&self, url: &str) -> InstrumentationBuilder {
        Instrumentation::builder(tracelink_nats::system(url))
            .with_tracer_provider(&self.provider)
            .with_propagator(TraceContextPropagator::new())
    }

    pub fn instrumentation(&self, url: &str) -> Instrumentation {
        self.builder(url).build()
    }

    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().unwrap()
    }

    /// Waits until `count` spans named `name` were exported; returns them.
    pub async fn wait_for(&self, name: &str, count: usize) -> Vec<SpanData> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<SpanData> = self
                .spans()
                .into_iter()
                .filter(|s| s.name == name)
                .collect();
            if found.len() >= count || Instant::now() > deadline {
                assert_eq!(
                    found.len(),
                    count,
                    "spans named {name:?}: {:#?}",
                    self.names()
                );
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.spans()
            .into_iter()
            .map(|s| s.name.into_owned())
            .collect()
    }
}

/// The span's attributes as text, by key.
pub fn attributes(span: &SpanData) -> BTreeMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| (kv.key.to_string(), value(&kv.value)))
        .collect()
}

fn value(v: &Value) -> String {
    v.to_string()
}

/// Builds an expected attribute map.
pub fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `messaging.system`, `server.address`, `server.port` for the shared broker.
pub fn common(url: &str) -> Vec<(&'static str, String)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "4222"));
    vec![
        ("messaging.system", "nats".into()),
        ("server.address", host.into()),
        ("server.port", port.trim_end_matches('/').into()),
    ]
}

pub fn assert_kind(span: &SpanData, kind: SpanKind) {
    assert_eq!(span.span_kind, kind, "kind of {}", span.name);
}

/// A `nats-server -js` of the test's own on a free port, with a store in a temporary directory;
/// killed (and its store removed) on drop. Follows async-nats' `nats_server` test support.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

const NATS_SERVER: &str = "/usr/sbin/nats-server";

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: None,
            port,
            store: dir.path().join("js"),
            _dir: dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| NATS_SERVER.into());
        let child = Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (abruptly, as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
