//! Consumes `--count` messages from a RabbitMQ queue, each in a CONSUMER span in a new trace
//! linked to its producer span, acked after the handler succeeded, then exits.
//!
//! ```text
//! cargo run --release --all-features --example amqp_consumer -- --queue orders --count 3
//! ```
//!
//! The queue is declared with the broker's defaults (not durable, not exclusive, not
//! auto-delete), so any client can share it. Prints
//! `processed <destination> trace_id=<32 hex> span_id=<16 hex> link=<32 hex>-<16 hex>` per
//! message. Spans go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME`
//! names the service.
mod common;

use std::convert::Infallible;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use opentelemetry::Context;
use tokio::sync::Notify;
use tower::service_fn;
use tracelink::amqp::lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use tracelink::amqp::lapin::types::{FieldTable, ShortString};
use tracelink::amqp::lapin::{Connection, ConnectionProperties};
use tracelink::amqp::{messaging_system, AmqpConsumer, AmqpDelivery};
use tracelink::core::IncomingMessage;
use tracelink::Instrumentation;

#[derive(Parser)]
struct Args {
    /// AMQP URL of the broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    url: String,
    /// Queue to consume from.
    #[arg(long, default_value = "orders")]
    queue: String,
    /// Exit after this many messages.
    #[arg(long, default_value_t = 3)]
    count: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("amqp_consumer")?;
    let connection = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = ShortString::try_new(args.queue.as_str())?;
    channel
        .queue_declare(
            queue.clone(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Take one message at a time: the ones after `--count` stay in the queue for the next run.
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let instrumentation = Instrumentation::new(messaging_system(&args.url));
    let processed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let handler = {
        let (instrumentation, processed, done, count) = (
            instrumentation.clone(),
            processed.clone(),
            done.clone(),
            args.count,
        );
        service_fn(move |delivery: AmqpDelivery| {
            // The process span is current while the handler runs.
            let link = instrumentation.producer_context(&delivery);
            common::print_processed(
                delivery.destination().name,
                &Context::current(),
                link.as_ref(),
            );
            if processed.fetch_add(1, Ordering::SeqCst) + 1 >= count {
                done.notify_one();
            }
            async { Ok::<_, Infallible>(()) }
        })
    };
    if args.count > 0 {
        AmqpConsumer::new(consumer, instrumentation)
            .run(handler, done.notified())
            .await?;
    }
    channel.close(200, "done".into()).await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}
