//! Publishes `--count` messages to a RabbitMQ queue through the default exchange, each in a
//! PRODUCER span whose context travels in the message headers, with publisher confirms.
//!
//! ```text
//! cargo run --release --all-features --example amqp_producer -- --queue orders --count 3
//! ```
//!
//! The queue is declared with the broker's defaults (not durable, not exclusive, not
//! auto-delete), so any client can share it. Prints
//! `sent <destination> trace_id=<32 hex> span_id=<16 hex>` per message. Spans go over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service.
mod common;

use std::error::Error;

use clap::Parser;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracelink::amqp::lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use tracelink::amqp::lapin::types::{FieldTable, ShortString};
use tracelink::amqp::lapin::{Connection, ConnectionProperties};
use tracelink::amqp::{messaging_system, AmqpPublisher, Publish};
use tracelink::core::OutgoingMessage;
use tracelink::{Instrumentation, ProducerLayer};

#[derive(Parser)]
struct Args {
    /// AMQP URL of the broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// Queue to publish to (through the default exchange).
    #[arg(long, default_value = "orders")]
    queue: String,
    /// How many messages to publish.
    #[arg(long, default_value_t = 3)]
    count: usize,
}

/// Prints the producer span while the layer calls the publisher: its context is current then.
fn print_sent(message: Publish) -> Publish {
    common::print_sent(
        message.destination().name,
        Context::current().span().span_context(),
    );
    message
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("amqp_producer")?;
    let connection = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            ShortString::try_new(args.queue.as_str())?,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Each publish waits for the broker's confirmation: nothing is lost when we exit.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let instrumentation = Instrumentation::new(messaging_system(&args.url));
    let mut publisher = ServiceBuilder::new()
        .layer(ProducerLayer::from(instrumentation))
        .map_request(print_sent)
        .service(AmqpPublisher::new(channel.clone()));
    for i in 0..args.count {
        let message = Publish::to_queue(
            ShortString::try_new(args.queue.as_str())?,
            format!("message {i}").into_bytes(),
        );
        publisher.ready().await?.call(message).await?;
    }
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}
