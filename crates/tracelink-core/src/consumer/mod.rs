//! The consumer side: a CONSUMER `process` span per message (or per batch), linked to the
//! producer's context, with the handler running inside it.
//!
//! The handler future is polled under the process span's OpenTelemetry [`Context`]
//! (`opentelemetry::context::FutureExt::with_context`), so spans started in the handler, whether
//! through the OpenTelemetry API or through `tracing` with `tracing-opentelemetry`, become its
//! children, and the producer's baggage (per the
//! [`BaggagePolicy`](crate::BaggagePolicy)) is current.
//!
//! [`Context`]: opentelemetry::Context

mod batch;
mod future;
mod layer;
mod service;

pub use batch::{BatchConsumerFuture, BatchConsumerLayer, BatchConsumerService};
pub use future::ConsumerFuture;
pub use layer::ConsumerLayer;
pub use service::ConsumerService;
