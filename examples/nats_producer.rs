//! Publishes `--count` messages to a NATS subject (or, with `--jetstream STREAM`, to a JetStream
//! stream, created when missing), each in a PRODUCER span whose context travels in the headers.
//!
//! ```text
//! cargo run --release --all-features --example nats_producer -- --subject orders --count 3
//! ```
//!
//! Prints `sent <subject> trace_id=<32 hex> span_id=<16 hex>` per message. Spans go over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service.
mod common;

use std::error::Error;

use clap::Parser;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracelink::nats::async_nats::jetstream::{self, stream};
use tracelink::nats::{JetStreamPublisher, NatsPublisher, Publish};
use tracelink::{Instrumentation, ProducerLayer};

#[derive(Parser)]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Subject to publish to.
    #[arg(long, default_value = "orders")]
    subject: String,
    /// How many messages to publish.
    #[arg(long, default_value_t = 3)]
    count: usize,
    /// Publish to this JetStream stream (created when missing) instead of core NATS.
    #[arg(long)]
    jetstream: Option<String>,
}

/// Prints the producer span while the layer calls the publisher: its context is current then.
fn print_sent(message: Publish) -> Publish {
    common::print_sent(
        message.subject.as_str(),
        Context::current().span().span_context(),
    );
    message
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("nats_producer")?;
    let client = tracelink::nats::async_nats::connect(&args.url).await?;
    let instrumentation = Instrumentation::new(tracelink::nats::messaging_system(&args.url));
    let layer = ProducerLayer::from(instrumentation);

    match &args.jetstream {
        None => {
            let mut publisher = ServiceBuilder::new()
                .layer(layer)
                .map_request(print_sent)
                .service(NatsPublisher::new(client.clone()));
            for i in 0..args.count {
                let message = Publish::new(args.subject.as_str(), format!("message {i}"));
                publisher.ready().await?.call(message).await?;
            }
            client.flush().await?;
        }
        Some(name) => {
            let js = jetstream::new(client.clone());
            js.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![args.subject.clone()],
                ..Default::default()
            })
            .await?;
            let mut publisher = ServiceBuilder::new()
                .layer(layer)
                .map_request(print_sent)
                .service(JetStreamPublisher::new(js));
            for i in 0..args.count {
                let message = Publish::new(args.subject.as_str(), format!("message {i}"));
                publisher.ready().await?.call(message).await?;
            }
        }
    }
    Ok(())
}
