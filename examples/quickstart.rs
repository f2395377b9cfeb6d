//! The core layers with no broker at all: messages travel through an in-process channel.
//!
//! `cargo run --example quickstart`
//!
//! Publishes three orders through `ProducerLayer` (each gets a PRODUCER span whose context is
//! injected into the message headers), consumes them through `ConsumerLayer` (each handler call
//! runs in a CONSUMER span of a new trace, linked to its producer span) and prints the ids.
mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tracelink::core::carrier::{MapExtractor, MapInjector};
use tracelink::core::{IncomingMessage, OutgoingMessage, PublishResponse};
use tracelink::{ConsumerLayer, Destination, Instrumentation, MessagingSystem, ProducerLayer};

/// An application message: a queue name, headers and a body.
#[derive(Debug, Clone)]
struct Message {
    queue: String,
    headers: HashMap<String, String>,
    body: String,
}

impl OutgoingMessage for Message {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.queue)
    }
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        f(&mut MapInjector(&mut self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

impl IncomingMessage for Message {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.queue)
    }
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        f(&MapExtractor(&self.headers))
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.body.len())
    }
}

/// The channel "broker" acknowledges nothing in particular.
struct Queued;
impl PublishResponse for Queued {}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let _telemetry = common::init("tracelink-quickstart")?;
    let instrumentation = Instrumentation::new(MessagingSystem::new("in_process"));
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();

    let mut producer = ServiceBuilder::new()
        .layer(ProducerLayer::from(instrumentation.clone()))
        .service(service_fn(move |msg: Message| {
            let tx = tx.clone();
            // The inner service runs inside the producer span's context.
            common::print_sent(&msg.queue, Context::current().span().span_context());
            async move {
                tx.send(msg)
                    .map(|()| Queued)
                    .map_err(|_| std::io::Error::other("consumer gone"))
            }
        }));
    for n in 1..=3 {
        let msg = Message {
            queue: "orders".into(),
            headers: HashMap::new(),
            body: format!("order #{n}"),
        };
        producer.ready().await?.call(msg).await?;
    }

    let linker = instrumentation.clone();
    let mut consumer = ServiceBuilder::new()
        .layer(ConsumerLayer::from(instrumentation))
        .service(service_fn(move |msg: Message| {
            let link = linker.producer_context(&msg);
            async move {
                common::print_processed(&msg.queue, &Context::current(), link.as_ref());
                Ok::<_, Infallible>(())
            }
        }));
    rx.close();
    while let Some(msg) = rx.recv().await {
        consumer.ready().await?.call(msg).await?;
    }
    Ok(())
}
