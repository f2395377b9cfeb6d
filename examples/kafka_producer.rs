//! Publishes `--count` records to a Kafka topic (created when missing), each in a `send {topic}`
//! PRODUCER span whose context travels in the record's headers.
//!
//! ```text
//! cargo run --release --all-features --example kafka_producer -- --brokers 127.0.0.1:9092 --topic orders --count 3
//! ```
//!
//! Prints `sent <topic> trace_id=<32 hex> span_id=<16 hex>` per record. Spans go over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service.
mod common;

use std::error::Error;

use clap::Parser;
use tower::{Service, ServiceExt};
use tracelink::kafka::rdkafka::config::ClientConfig;
use tracelink::kafka::rdkafka::producer::FutureProducer;
use tracelink::kafka::{messaging_system, KafkaPublisher, KafkaRecord};
use tracelink::Instrumentation;

#[derive(Parser)]
struct Args {
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to publish to (created with one partition when missing).
    #[arg(long, default_value = "orders")]
    topic: String,
    /// How many records to publish.
    #[arg(long, default_value_t = 3)]
    count: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("kafka_producer")?;
    common::kafka::ensure_topic(&args.brokers, &args.topic).await?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", "kafka_producer")
        .set("message.timeout.ms", "10000");
    let producer: FutureProducer = config.create()?;
    let mut publish =
        KafkaPublisher::new(producer).traced(Instrumentation::new(messaging_system(&config)));
    for i in 0..args.count {
        let record = KafkaRecord::new(&args.topic)
            .with_key(format!("key-{i}"))
            .with_payload(format!("message {i}"));
        let delivered = publish.ready().await?.call(record).await?;
        common::print_sent(&args.topic, delivered.span_context());
    }
    Ok(())
}
