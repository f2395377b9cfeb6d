//! Consumes `--count` messages from an SQS queue (created when missing): a CLIENT `receive` span
//! per non-empty long poll, then each message in a CONSUMER span in a new trace linked to its
//! producer span; messages are deleted after their handler succeeded. Exits after `--count`.
//!
//! ```text
//! cargo run --release --all-features --example sqs_consumer -- --endpoint http://127.0.0.1:5000 --queue orders --count 3
//! ```
//!
//! `--endpoint` defaults to `AWS_ENDPOINT_URL`; without either, the real SQS endpoint of the
//! configured region is used with the standard AWS credential chain. Prints
//! `processed <queue> trace_id=<32 hex> span_id=<16 hex> link=<32 hex>-<16 hex>` per message.
//! Spans go over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; `OTEL_SERVICE_NAME` names the
//! service.
mod common;

use std::convert::Infallible;
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use opentelemetry::Context;
use tokio::sync::Notify;
use tower::service_fn;
use tracelink::sqs::{ReceivedMessage, SqsConsumer, SqsSource};
use tracelink::Instrumentation;

#[derive(Parser)]
struct Args {
    /// SQS endpoint (moto, LocalStack); unset: AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint: Option<String>,
    /// Queue name; created when missing.
    #[arg(long, default_value = "orders")]
    queue: String,
    /// Exit after this many messages.
    #[arg(long, default_value_t = 3)]
    count: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let _telemetry = common::init("sqs_consumer")?;
    let (client, system) = tracelink::sqs::client_from_env(args.endpoint.as_deref()).await;
    let queue_url = common::sqs::ensure_queue(&client, &args.queue).await?;
    let instrumentation = Instrumentation::new(system);

    let processed = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (counter, finished, printer) = (processed.clone(), done.clone(), instrumentation.clone());
    let count = args.count;
    let handler = service_fn(move |message: ReceivedMessage| {
        // The process span is current while the handler is called.
        let link = printer.producer_context(&message);
        common::print_processed(message.queue_name(), &Context::current(), link.as_ref());
        if counter.fetch_add(1, Ordering::Relaxed) + 1 >= count {
            finished.notify_one();
        }
        async { Ok::<_, Infallible>(()) }
    });
    if count == 0 {
        return Ok(());
    }
    // Stop after `--count` messages: what was received beyond them goes back to the queue at
    // once (visibility 0), and the last handler's message is deleted before `run` returns.
    SqsConsumer::new(SqsSource::new(client, queue_url), instrumentation)
        .with_prefetch(count.min(10))
        .run(handler, done.notified())
        .await?;
    Ok(())
}
