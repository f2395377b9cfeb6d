//! The publishing service: owned records in, deliveries out.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use opentelemetry::trace::TraceContextExt;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tower::{Layer, Service};
use tracelink_core::{
    DefaultErrorType, ErrorType, Instrumentation, MessagingSystem, ProducerLayer, ProducerService,
};

use crate::message::{Delivered, KafkaRecord};

/// A tower [`Service`] that publishes [`KafkaRecord`]s through an rdkafka [`FutureProducer`] and
/// resolves to where each one was [`Delivered`].
///
/// Wrap it in a [`ProducerLayer`] (or call [`traced`](KafkaPublisher::traced)) for a `send {topic}`
/// PRODUCER span per record, its context injected into the record's headers.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    queue_timeout: Timeout,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("queue_timeout", &self.queue_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// Publishes through `producer`; waits at most 5 s for room in a full local queue.
    pub fn new(producer: FutureProducer) -> Self {
        Self {
            producer,
            queue_timeout: Timeout::After(Duration::from_secs(5)),
        }
    }

    /// How long a publish waits for room when librdkafka's local queue is full
    /// (`Timeout::Never` waits forever).
    pub fn with_queue_timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.queue_timeout = timeout.into();
        self
    }

    /// The rdkafka producer.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Wraps this service in a [`ProducerLayer`] built from `instrumentation`.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<Self, DefaultErrorType> {
        ProducerLayer::from(instrumentation).layer(self)
    }
}

/// A publish that failed: the librdkafka error and, when librdkafka handed it back, the message.
#[derive(Debug, thiserror::Error)]
#[error("kafka delivery failed: {error}")]
pub struct ProduceError {
    /// What librdkafka reported.
    pub error: KafkaError,
    /// The undelivered message, for a retry or a dead-letter queue.
    pub message: Option<OwnedMessage>,
}

impl ErrorType for ProduceError {
    /// The librdkafka error code name (`MessageTimedOut`, `UnknownTopicOrPartition`, ...), or the
    /// rdkafka error kind when there is no code.
    fn error_type(&self) -> Cow<'static, str> {
        error_type(&self.error)
    }
}

/// The low-cardinality `error.type` of a [`KafkaError`]: its librdkafka error code name when it
/// has one, otherwise the kind of rdkafka error.
pub fn error_type(error: &KafkaError) -> Cow<'static, str> {
    if let Some(code) = error.rdkafka_error_code() {
        return Cow::Owned(format!("{code:?}"));
    }
    Cow::Borrowed(match error {
        KafkaError::Canceled => "Canceled",
        KafkaError::ClientConfig(..) => "ClientConfig",
        KafkaError::ClientCreation(_) => "ClientCreation",
        KafkaError::NoMessageReceived => "NoMessageReceived",
        KafkaError::Nul(_) => "Nul",
        KafkaError::PartitionEOF(_) => "PartitionEOF",
        _ => tracelink_core::OTHER_ERROR,
    })
}

impl Service<KafkaRecord> for KafkaPublisher {
    type Response = Delivered;
    type Error = ProduceError;
    type Future = Pin<Box<dyn Future<Output = Result<Delivered, ProduceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, record: KafkaRecord) -> Self::Future {
        let producer = self.producer.clone();
        let queue_timeout = self.queue_timeout;
        // Inside the producer layer this is the `send` span.
        let span_context = opentelemetry::Context::current()
            .span()
            .span_context()
            .clone();
        Box::pin(async move {
            let mut record = record;
            // Moved, not cloned: a clone copies the whole header list inside librdkafka.
            let headers = record.headers.take();
            let mut future_record = FutureRecord::<[u8], [u8]>::to(&record.topic);
            if let Some(key) = &record.key {
                future_record = future_record.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                future_record = future_record.payload(payload.as_slice());
            }
            if let Some(partition) = record.partition {
                future_record = future_record.partition(partition);
            }
            if let Some(timestamp) = record.timestamp {
                future_record = future_record.timestamp(timestamp);
            }
            if let Some(headers) = headers {
                future_record = future_record.headers(headers);
            }
            match producer.send(future_record, queue_timeout).await {
                Ok(delivery) => Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                    partition_chosen: record.partition.is_some(),
                    span_context,
                }),
                Err((error, message)) => Err(ProduceError {
                    error,
                    message: Some(message),
                }),
            }
        })
    }
}

/// The [`MessagingSystem`] (`kafka`) of a client built from `config`: `server.address` and
/// `server.port` from the first entry of `bootstrap.servers`, `messaging.client.id` from
/// `client.id` when set.
pub fn messaging_system(config: &ClientConfig) -> MessagingSystem {
    let mut system = MessagingSystem::new("kafka");
    if let Some((host, port)) = config.get("bootstrap.servers").and_then(first_server) {
        system = system.with_server(host, port);
    }
    if let Some(client_id) = config.get("client.id") {
        system = system.with_client_id(client_id);
    }
    system
}

/// Host and port of the first broker of a `bootstrap.servers` list
/// (`host:port,host2:port`, optionally `PLAINTEXT://host:port`, `[::1]:9092`).
fn first_server(servers: &str) -> Option<(String, Option<u16>)> {
    tracelink_core::server_from_url(servers).map(|(host, port)| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    #[test]
    fn bootstrap_servers_parse() {
        assert_eq!(
            first_server("127.0.0.1:9092,b:1"),
            Some(("127.0.0.1".into(), Some(9092)))
        );
        assert_eq!(
            first_server("PLAINTEXT://kafka:29092"),
            Some(("kafka".into(), Some(29092)))
        );
        assert_eq!(first_server("[::1]:9092"), Some(("::1".into(), Some(9092))));
        assert_eq!(first_server("kafka"), Some(("kafka".into(), None)));
        assert_eq!(first_server(" , "), None);
    }

    #[test]
    fn error_types_are_code_names() {
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(error_type(&e), "MessageTimedOut");
        assert_eq!(error_type(&KafkaError::Canceled), "Canceled");
    }
}
