//! Amazon SQS adapter of [tracelink](https://docs.rs/tracelink): traces that survive SQS.
//!
//! * **Carriers** over SQS message attributes ([`AttributeInjector`], [`AttributeExtractor`]):
//!   the propagator's fields (`traceparent`, `tracestate`, `baggage` with the W3C propagators)
//!   travel as `String` attributes; `Binary` attributes holding UTF-8 are read too.
//! * **The 10-attribute limit.** SQS rejects a message with more than 10 message attributes.
//!   Tracing never makes a send fail: when the message's own attributes leave no room for the
//!   propagator's fields, the context goes into the `AWSTraceHeader` system attribute (X-Ray
//!   format) or is skipped with a warning ([`OverflowPolicy`]); either way the message's own span
//!   (its `send` span, or its `create` span in a batch) gets an event and the
//!   `tracelink.sqs.context.overflow` counter (on the instrumentation's meter) counts the
//!   message. `AWSTraceHeader` can also be chosen outright ([`TraceCarrier`]). This placement is
//!   the [`TracePlacement`] hook the core's producer layers call right after injecting each
//!   message's context ([`OnInject`](tracelink_core::OnInject)); the `AWSTraceHeader` is that
//!   context's.
//! * **Publishing**: [`SqsPublisher`] is a tower service for `SendMessage` ([`SendRequest`]),
//!   [`SqsBatchPublisher`] for `SendMessageBatch` (`Vec<SendRequest>`);
//!   [`SqsPublisher::traced`] and [`SqsPublisher::traced_batch`] wrap them in the core's
//!   producer layers. Spans `send {queue}` (and a `create {queue}` per batch entry, each entry
//!   with its own context; refused entries fail their span with the SQS error code) with
//!   `messaging.system` = `aws_sqs`, `messaging.destination.name`, `aws.sqs.queue.url`,
//!   `messaging.message.id`, `aws.request_id`, `server.address` and `error.type`.
//! * **Consuming**: [`SqsConsumer`] is the core's [`Consumer`](tracelink_core::Consumer) over
//!   an [`SqsSource`]: long-polled `ReceiveMessage` calls that always ask for the propagator's
//!   attributes and `AWSTraceHeader` on top of what you asked for (your `All` stays `All`), a
//!   CLIENT `receive {queue}` span per non-empty receive with a link per message, your handler
//!   in a CONSUMER `process {queue}` span linked to the message's creation context, and the
//!   message settled by the [`SqsSettler`] only after the handler's outcome. The context is
//!   read from the message attributes, else from the envelope of an SNS notification (SNS
//!   subscription without raw delivery), else from `AWSTraceHeader` ([`ContextSource`]).
//!   Messages of a FIFO queue's message group are handled one after the other.
//!
//! # Failure policy
//!
//! What the core's [`OnFailure`](tracelink_core::OnFailure) does on SQS (settle spans, with
//! [`with_settle_spans`](tracelink_core::Consumer::with_settle_spans), are named after the call):
//!
//! | policy | SQS |
//! |---|---|
//! | `Redeliver` (default) | no call: the message is left for its visibility timeout, then delivered again (a redrive policy dead-letters it after `maxReceiveCount` receives); no settle span |
//! | `RedeliverAfter(d)` | `ChangeMessageVisibility` to `d` (whole seconds, rounded up, at most 12 h): delivered again after `d` (`change_visibility`) |
//! | `Reject` | delete (`delete`): SQS has no reject, and a redrive policy would have it received again first; use `Redeliver` with a redrive policy to dead-letter |
//! | `Stop` | as `Redeliver`, then the consumer stops and `run` returns [`ConsumeError::Handler`](tracelink_core::ConsumeError::Handler) |
//! | given back on stop (`Release`) | `ChangeMessageVisibility` to 0 (`change_visibility`): delivered again at once |
//!
//! A handler that succeeded gets a delete (`delete`). Deletes asked for within a few turns of
//! the consumer (handlers that finished close together; no timer) go out as one
//! `DeleteMessageBatch` of up to 10, a lone one as `DeleteMessage`; a batch
//! consumer ([`run_batches`](tracelink_core::Consumer::run_batches)) settles with
//! `DeleteMessageBatch`/`ChangeMessageVisibilityBatch`.
//!
//! # Quick start
//!
//! ```no_run
//! use std::convert::Infallible;
//! use tower::{service_fn, Service, ServiceExt};
//! use tracelink_core::Instrumentation;
//! use tracelink_sqs::{ReceivedMessage, SendRequest, SqsConsumer, SqsPublisher, SqsSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, system) = tracelink_sqs::client_from_env(None).await;
//! let queue_url = client.create_queue().queue_name("orders").send().await?
//!     .queue_url().unwrap_or_default().to_owned();
//! // Install your tracer provider and propagator first (global), or pass them to the builder.
//! let instrumentation = Instrumentation::new(system);
//!
//! // Send: a PRODUCER span `send orders`, its context in the message attributes.
//! let mut publisher = SqsPublisher::new(client.clone()).traced(instrumentation.clone());
//! publisher.ready().await?.call(SendRequest::new(&queue_url, "order #1")).await?;
//!
//! // Receive: `receive orders`, then `process orders` per message, linked to the producer;
//! // deleted after the handler succeeded. Runs until Ctrl-C.
//! let handler = service_fn(|message: ReceivedMessage| async move {
//!     println!("{}", message.body());
//!     Ok::<_, Infallible>(())
//! });
//! SqsConsumer::new(SqsSource::new(client, &queue_url), instrumentation)
//!     .run(handler, tokio::signal::ctrl_c())
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Customisation
//!
//! * Everything the core offers through the [`Instrumentation`](tracelink_core::Instrumentation)
//!   builder: tracer and meter providers, propagator (B3, Jaeger, X-Ray work unchanged), link
//!   mode, span names, header capture, baggage policy.
//! * Publishing: [`SqsPublisher::with_carrier`] (message attributes, `AWSTraceHeader`, or both)
//!   and [`SqsPublisher::with_overflow_policy`].
//! * Receiving: [`SqsSource`] sets the batch size, long-poll wait, visibility timeout and the
//!   attribute names your handler needs; the core's builder sets concurrency, prefetch, the
//!   failure policy, settle and receive spans, batching and the `error.type` classifier.
//! * Your own receive loop: wrap SDK messages with [`ReceivedMessage::new`] and use the core's
//!   [`ConsumerLayer`](tracelink_core::ConsumerLayer); ask for the propagator's attribute names
//!   and `AWSTraceHeader` yourself.
//!
//! # Cargo features
//!
//! * `aws-config` (default): [`client_from_env`], a client from the standard AWS configuration
//!   with an optional endpoint override.
//!
//! The SDK is used with `rt-tokio`, `default-https-client` (rustls) and
//! `behavior-version-latest`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]
#![deny(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod carrier;
mod error;
mod message;
mod send;
mod settle;
mod sns;
mod source;

pub use carrier::{AttributeExtractor, AttributeInjector};
pub use error::{EntryError, SqsError};
pub use message::{queue_name, ContextSource, ReceivedMessage, SendRequest};
pub use send::{
    BatchSent, OverflowPolicy, SendFuture, SentMessage, SqsBatchPublisher, SqsPublisher,
    TraceCarrier, TracePlacement, MAX_MESSAGE_ATTRIBUTES,
};
pub use settle::SqsSettler;
pub use source::{SqsConsumer, SqsSource};

/// Re-exported so users name the same SDK version.
pub use aws_sdk_sqs;

use tracelink_core::MessagingSystem;

/// The `messaging.system` value for Amazon SQS. (The semantic-conventions crate has the
/// attribute name but no constant for its values.)
pub const SYSTEM: &str = "aws_sqs";

/// The [`MessagingSystem`] of SQS at `endpoint_url` (an emulator, a VPC endpoint), or at the
/// regional endpoint `sqs.{region}.amazonaws.com` when there is none: `aws_sqs`, with
/// `server.address` and `server.port`.
///
/// (The SDK's `Config` does not expose its endpoint override, so it is passed here.)
pub fn messaging_system(endpoint_url: Option<&str>, region: Option<&str>) -> MessagingSystem {
    let system = MessagingSystem::new(SYSTEM);
    if let Some((host, port)) = endpoint_url.and_then(host_and_port) {
        return system.with_server(host, port);
    }
    match region {
        Some(region) => system.with_server(format!("sqs.{region}.amazonaws.com"), Some(443)),
        None => system,
    }
}

/// Host and port of an endpoint URL (`http://127.0.0.1:5000` → `127.0.0.1`, `5000`).
fn host_and_port(url: &str) -> Option<(String, Option<u16>)> {
    tracelink_core::server_from_url(url).map(|(host, port)| (host.to_owned(), port))
}

/// A client from the standard AWS configuration (environment, profile, credential chain,
/// region), talking to `endpoint` when given (an emulator such as moto or LocalStack), and the
/// [`MessagingSystem`] describing it (see [`messaging_system`]). Without `endpoint`, the
/// `AWS_ENDPOINT_URL` variable and profile settings apply as usual.
#[cfg(feature = "aws-config")]
pub async fn client_from_env(endpoint: Option<&str>) -> (aws_sdk_sqs::Client, MessagingSystem) {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let config = loader.load().await;
    let system = messaging_system(config.endpoint_url(), config.region().map(|r| r.as_ref()));
    (aws_sdk_sqs::Client::new(&config), system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            host_and_port("http://127.0.0.1:5000"),
            Some(("127.0.0.1".into(), Some(5000)))
        );
        assert_eq!(
            host_and_port("https://sqs.eu-west-1.amazonaws.com/"),
            Some(("sqs.eu-west-1.amazonaws.com".into(), None))
        );
        assert_eq!(
            host_and_port("http://[::1]:4566/x"),
            Some(("::1".into(), Some(4566)))
        );
        assert_eq!(host_and_port("http://"), None);
        // Credentials in an endpoint URL never become attributes.
        assert_eq!(
            host_and_port("http://AKIAEXAMPLE:s3cr3t@localhost:4566/"),
            Some(("localhost".into(), Some(4566)))
        );
    }

    #[test]
    fn system_names_aws_sqs() {
        assert_eq!(messaging_system(None, Some("us-east-1")).name(), "aws_sqs");
    }
}
