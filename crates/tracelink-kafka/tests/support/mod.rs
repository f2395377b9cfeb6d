//! Brokers, names and span helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::SpanKind;
use opentelemetry::{Key, Value};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer};
use rdkafka::types::RDKafkaErrorCode;
use tracelink_core::{Instrumentation, MessagingSystem};
use tracelink_kafka::{consumer_config, messaging_system, KafkaConsumer, KafkaSource};

/// Where a test's Kafka lives: librdkafka's in-process mock cluster, or tansu at `KAFKA_BROKERS`.
pub enum Backend {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(String),
}

impl Backend {
    pub fn mock() -> Self {
        Backend::Mock(MockCluster::new(1).expect("mock cluster"))
    }

    /// tansu at `KAFKA_BROKERS`: fails loudly when it is unset or unreachable (CI always sets it).
    pub fn tansu() -> Self {
        let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_default();
        assert!(
            !brokers.is_empty(),
            "KAFKA_BROKERS is not set: these tests need the tansu broker; run \
             `eval \"$(scripts/services)\"` first (it starts tansu on 127.0.0.1:9092)"
        );
        let first = brokers
            .split(',')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&first)
            .unwrap_or_else(|e| panic!("KAFKA_BROKERS={brokers}: cannot resolve {first}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("KAFKA_BROKERS={brokers}: no address for {first}"));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| {
            panic!("KAFKA_BROKERS={brokers} is set but the broker at {first} is unreachable: {e}")
        });
        Backend::Tansu(brokers)
    }

    pub fn brokers(&self) -> String {
        match self {
            Backend::Mock(cluster) => cluster.bootstrap_servers(),
            Backend::Tansu(brokers) => brokers.clone(),
        }
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        match self {
            Backend::Mock(cluster) => cluster
                .create_topic(name, partitions, 1)
                .expect("create topic on the mock cluster"),
            Backend::Tansu(brokers) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .create()
                    .expect("admin client");
                let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
                let results = admin
                    .create_topics([&topic], &AdminOptions::new())
                    .await
                    .expect("create topics");
                for result in results {
                    match result {
                        Ok(_) => {}
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((topic, code)) => panic!("creating topic {topic} failed: {code:?}"),
                    }
                }
            }
        }
    }

    pub fn producer(&self) -> FutureProducer {
        self.producer_config().create().expect("producer")
    }

    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers())
            .set("client.id", "tracelink-test")
            .set("message.timeout.ms", "10000");
        config
    }

    /// A consumer in `group`, subscribed to `topic`.
    pub fn consumer(
        &self,
        group: &str,
        topic: &str,
        instrumentation: Instrumentation,
    ) -> KafkaConsumer {
        let mut config = consumer_config(&self.brokers(), group);
        config
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("client.id", "tracelink-test");
        let source = KafkaSource::from_config(&config).expect("consumer");
        rdkafka::consumer::Consumer::subscribe(&**source.consumer(), &[topic]).expect("subscribe");
        KafkaConsumer::new(source, instrumentation)
    }
}

/// Runs `body` against the mock cluster and against tansu.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mock() {
                super::$name($crate::support::Backend::mock()).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tansu() {
                super::$name($crate::support::Backend::tansu()).await
            }
        }
    };
}

/// A topic or group name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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

    pub fn instrumentation(&self, system: MessagingSystem) -> Instrumentation {
        Instrumentation::builder(system)
            .with_tracer_provider(&self.provider)
            .with_propagator(TraceContextPropagator::new())
            .build()
    }

    pub fn producer_instrumentation(&self, backend: &Backend) -> Instrumentation {
        self.instrumentation(messaging_system(&backend.producer_config()))
    }

    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("finished spans")
    }

    pub fn named(&self, name: &str) -> Vec<SpanData> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

pub fn attr(span: &SpanData, key: &str) -> Option<Value> {
    let key = Key::from(key.to_owned());
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
}

pub fn assert_kind(span: &SpanData, kind: SpanKind) {
    assert_eq!(span.span_kind, kind, "kind of {}", span.name);
}

/// Guards a test against hanging forever; it is not a speed assertion.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);
