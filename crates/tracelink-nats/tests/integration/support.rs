//! Shared by the integration tests: the broker address, a spawned `nats-server` for tests that
//! kill it, unique names, and span helpers over the SDK's in-memory exporter.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
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

/// Returns once the server has processed everything `client` sent before (a `SUB`, a `PUB`).
/// async-nats' `flush` only writes to the socket: a subscription is not yet in place, and a
/// message not yet routed, when it returns, so a message sent on another connection may get
/// there first. A request nobody answers comes back as "no responders" only after the server
/// handled what came before it on the same connection: a `PING`/`PONG` round trip.
pub async fn round_trip(client: &async_nats::Client) {
    let error = client
        .request(unique("round_trip"), bytes::Bytes::new())
        .await
        .expect_err("nobody answers");
    assert_eq!(
        error.kind(),
        async_nats::client::RequestErrorKind::NoResponders,
        "{error}"
    );
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
        Instrumentation::builder(tracelink_nats::messaging_system(url))
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

/// A `nats-server -js` of the test's own, with a store in a temporary directory; killed (and its
/// store removed) on drop. Follows async-nats' `nats_server` test support, with two differences
/// that a restart on the same port needs:
///
/// * The port is outside the kernel's ephemeral range. A port found by binding `127.0.0.1:0` is
///   an ephemeral one: while the server is down for a restart, any outgoing connection on the
///   machine (the test's own clients reconnecting, other tests, other processes) may be given it
///   as its local port, and the server then cannot listen on it again. Below the range, only an
///   explicit bind can take it (another test's server picking the same number): `start` then
///   tries another port, `restart` waits for the port to come free.
/// * The server is ready when its own log says so, not when something accepts a TCP connection
///   on the port (which may be another process, or a connection to itself: a TCP self-connect
///   when the probe's ephemeral source port equals the port probed).
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    dir: tempfile::TempDir,
    spawns: u32,
}

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Why a spawned server did not come up.
enum SpawnError {
    /// Something else holds the port.
    PortInUse,
}

impl NatsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            store: dir.path().join("js"),
            dir,
            spawns: 0,
        };
        for _ in 0..20 {
            server.port = free_port_below_ephemeral_range();
            match server.spawn() {
                Ok(()) => return server,
                Err(SpawnError::PortInUse) => continue,
            }
        }
        panic!("nats-server found no free port in 20 tries")
    }

    /// Starts the server and waits until it is ready; the log of each start is a file of its own.
    fn spawn(&mut self) -> Result<(), SpawnError> {
        let binary = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| NATS_SERVER.into());
        self.spawns += 1;
        let log_path = self.dir.path().join(format!("server-{}.log", self.spawns));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new(&binary)
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
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("Server is ready") {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                // The log is complete once the process is gone.
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                if text.contains("address already in use") {
                    return Err(SpawnError::PortInUse);
                }
                panic!(
                    "nats-server exited ({status}) on port {}:\n{text}",
                    self.port
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server not ready on port {} in 10 s:\n{text}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (abruptly, as a crash would) and waits until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again on the same port with the same store. Should something
    /// hold the port, waits for it (bounded) rather than move: the clients know this port only.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(SpawnError::PortInUse) = self.spawn() {
            assert!(
                Instant::now() < deadline,
                "port {} stayed in use after the server was killed",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server and starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range (so that no outgoing
/// connection is ever given it), picked at random so that parallel tests rarely pick the same.
fn free_port_below_ephemeral_range() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.max(10_001));
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let port = low + (hasher.finish() % u64::from(high - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Completes once `done` holds (checked every 20 ms): a consumer's shutdown signal.
pub async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
