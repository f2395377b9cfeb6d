//! Consumes `--count` messages from a Kafka topic (created when missing) in consumer group
//! `--group`, from the earliest offset, each in a `process {topic}` CONSUMER span linked to the
//! producer's span; offsets are committed only after the handler succeeded.
//!
//! ```text
//! cargo run --release --all-features --example kafka_consumer -- --brokers 127.0.0.1:9092 --topic orders --count 3
//! ```
//!
//! Prints `processed <topic> trace_id=<32 hex> span_id=<16 hex> link=<32 hex>-<16 hex>` per
//! message (without `link=` when the message carried no context). Spans go over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service.
mod common;

use std::convert::Infallible;
use std::error::Error;

use clap::Parser;
use opentelemetry::Context;
use tokio::sync::mpsc;
use tower::service_fn;
use tracelink::kafka::rdkafka::consumer::Consumer;
use tracelink::kafka::{
    consumer_config, messaging_system, KafkaConsumer, KafkaMessage, KafkaSource,
};
use tracelink::Instrumentation;

#[derive(Parser)]
struct Args {
    /// Bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to consume (created with one partition when missing).
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Exit after this many messages.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Consumer group.
    #[arg(long, default_value = "tracelink-example")]
    group: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("kafka_consumer")?;
    common::kafka::ensure_topic(&args.brokers, &args.topic).await?;
    let mut config = consumer_config(&args.brokers, &args.group);
    config.set("client.id", "kafka_consumer");
    let instrumentation = Instrumentation::new(messaging_system(&config));
    let source = KafkaSource::from_config(&config)?;
    source.consumer().subscribe(&[args.topic.as_str()])?;
    let consume = KafkaConsumer::new(source, instrumentation.clone());

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let handler = service_fn(move |message: KafkaMessage| {
        let link = instrumentation.producer_context(&message);
        common::print_processed(message.topic(), &Context::current(), link.as_ref());
        let _ = done_tx.send(());
        async { Ok::<_, Infallible>(()) }
    });
    let count = args.count;
    let shutdown = async move {
        for _ in 0..count {
            if done_rx.recv().await.is_none() {
                return;
            }
        }
    };
    consume.run(handler, shutdown).await?;
    Ok(())
}
