//! Consumes `--count` messages from a NATS subject (or, with `--jetstream STREAM`, from a durable
//! pull consumer on that stream, created when missing), each in a CONSUMER span in a new trace
//! linked to its producer span, then exits.
//!
//! ```text
//! cargo run --release --all-features --example nats_consumer -- --subject orders --count 3
//! ```
//!
//! Prints `processed <subject> trace_id=<32 hex> span_id=<16 hex> link=<32 hex>-<16 hex>` per
//! message. Spans go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME`
//! names the service.
mod common;

use std::convert::Infallible;
use std::error::Error;

use clap::Parser;
use opentelemetry::Context;
use tower::{service_fn, Layer};
use tracelink::core::IncomingMessage;
use tracelink::nats::async_nats::jetstream::{self, consumer::pull, stream};
use tracelink::nats::{JetStreamConsumer, JetStreamDelivery, Subscription};
use tracelink::{ConsumerLayer, Instrumentation};

#[derive(Parser)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subject to consume from.
    #[arg(long, default_value = "orders")]
    subject: String,
    /// Exit after this many messages.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Consume from this JetStream stream (created when missing) instead of core NATS.
    #[arg(long)]
    jetstream: Option<String>,
}

/// Prints the process span (current while the handler runs) and the producer span it links to.
fn print_processed<M: IncomingMessage>(instrumentation: &Instrumentation, message: &M) {
    let link = instrumentation.producer_context(message);
    common::print_processed(
        message.destination().name,
        &Context::current(),
        link.as_ref(),
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("nats_consumer")?;
    let client = tracelink::nats::async_nats::connect(&args.url).await?;
    let instrumentation = Instrumentation::new(tracelink::nats::messaging_system(&args.url));

    match &args.jetstream {
        None => {
            let mut subscription = Subscription::subscribe(&client, args.subject.as_str()).await?;
            let printer = instrumentation.clone();
            let mut handler = ConsumerLayer::from(instrumentation).layer(service_fn(
                move |delivery: tracelink::nats::Delivery| {
                    print_processed(&printer, &delivery);
                    async { Ok::<_, Infallible>(()) }
                },
            ));
            for _ in 0..args.count {
                if subscription.process_next(&mut handler).await.is_none() {
                    break;
                }
            }
        }
        Some(name) => {
            let js = jetstream::new(client.clone());
            let stream = js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![args.subject.clone()],
                    ..Default::default()
                })
                .await?;
            let consumer = stream
                .get_or_create_consumer(
                    "nats_consumer_example",
                    pull::Config {
                        durable_name: Some("nats_consumer_example".into()),
                        filter_subject: args.subject.clone(),
                        ..Default::default()
                    },
                )
                .await?;
            let printer = instrumentation.clone();
            let mut handler = ConsumerLayer::from(instrumentation.clone()).layer(service_fn(
                move |delivery: JetStreamDelivery| {
                    print_processed(&printer, &delivery);
                    async { Ok::<_, Infallible>(()) }
                },
            ));
            let mut consumer = JetStreamConsumer::new(consumer, instrumentation);
            let mut processed = 0;
            while processed < args.count {
                // Never fetch more than is left to print: the rest stays for the next run.
                consumer = consumer.with_batch_size((args.count - processed).min(100));
                processed += consumer.process_next(&mut handler).await?;
            }
        }
    }
    Ok(())
}
