//! Sends `--count` messages to an SQS queue (created when missing), each in a PRODUCER span whose
//! context travels in the message attributes.
//!
//! ```text
//! cargo run --release --all-features --example sqs_producer -- --endpoint http://127.0.0.1:5000 --queue orders --count 3
//! ```
//!
//! `--endpoint` defaults to `AWS_ENDPOINT_URL`; without either, the real SQS endpoint of the
//! configured region is used with the standard AWS credential chain. Prints
//! `sent <queue> trace_id=<32 hex> span_id=<16 hex>` per message. Spans go over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the service.
mod common;

use std::error::Error;

use clap::Parser;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracelink::sqs::{SendRequest, SqsPublisher};
use tracelink::{Instrumentation, ProducerLayer};

#[derive(Parser)]
struct Args {
    /// SQS endpoint (moto, LocalStack); unset: AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint: Option<String>,
    /// Queue name; created when missing.
    #[arg(long, default_value = "orders")]
    queue: String,
    /// How many messages to send.
    #[arg(long, default_value_t = 3)]
    count: usize,
}

/// Prints the producer span while the layer calls the sender: its context is current then.
fn print_sent(request: SendRequest) -> SendRequest {
    common::print_sent(
        request.queue_name(),
        Context::current().span().span_context(),
    );
    request
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("sqs_producer")?;
    let (client, system) = tracelink::sqs::client_from_env(args.endpoint.as_deref()).await;
    let queue_url = common::sqs::ensure_queue(&client, &args.queue).await?;
    let instrumentation = Instrumentation::new(system);

    // `SqsPublisher::new(client).traced(instrumentation)` is the whole traced service; the
    // example layers it by hand to print the producer span from inside it, with the
    // publisher's placement hook as `traced` does (10-attribute limit, AWSTraceHeader).
    let publisher = SqsPublisher::new(client);
    let placement = publisher.placement(&instrumentation);
    let mut sender = ServiceBuilder::new()
        .layer(ProducerLayer::from(instrumentation).on_inject(placement))
        .map_request(print_sent)
        .service(publisher);
    for i in 0..args.count {
        let request = SendRequest::new(&queue_url, format!("message {i}"));
        sender.ready().await?.call(request).await?;
    }
    Ok(())
}
