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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use opentelemetry::Context;
use tokio::sync::Notify;
use tower::service_fn;
use tracelink::core::IncomingMessage;
use tracelink::nats::async_nats::jetstream::{self, consumer::pull, stream};
use tracelink::nats::{JetStreamConsumer, JetStreamDelivery, NatsConsumer, NatsDelivery};
use tracelink::Instrumentation;

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

    // Stops once `--count` messages were handled (the last one finishes and is settled first).
    let processed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let count = args.count;
    let printed = {
        let (processed, done) = (processed.clone(), done.clone());
        move || {
            if processed.fetch_add(1, Ordering::SeqCst) + 1 >= count {
                done.notify_one();
            }
        }
    };
    let shutdown = async move {
        if count > 0 {
            done.notified().await;
        }
    };

    match &args.jetstream {
        None => {
            let subscriber = client.subscribe(args.subject.clone()).await?;
            let printer = instrumentation.clone();
            let handler = service_fn(move |delivery: NatsDelivery| {
                print_processed(&printer, &delivery);
                printed();
                async { Ok::<_, Infallible>(()) }
            });
            NatsConsumer::new(subscriber, instrumentation)
                .run(handler, shutdown)
                .await?;
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
            let handler = service_fn(move |delivery: JetStreamDelivery| {
                print_processed(&printer, &delivery);
                printed();
                async { Ok::<_, Infallible>(()) }
            });
            JetStreamConsumer::new(consumer, instrumentation)
                // Never fetch more than is left to print: the rest stays for the next run.
                .with_prefetch(args.count.clamp(1, 100))
                .run(handler, shutdown)
                .await?;
        }
    }
    Ok(())
}
