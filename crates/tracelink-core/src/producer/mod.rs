//! The producer side: a PRODUCER span per published message, its context injected into the
//! message's headers before the inner service sees it.
//!
//! [`ProducerLayer`] wraps services taking one [`OutgoingMessage`](crate::OutgoingMessage);
//! [`BatchProducerLayer`] wraps services taking a `Vec` of them.

mod batch;
mod future;
mod layer;
mod on_inject;
mod service;

pub use batch::{BatchProducerFuture, BatchProducerLayer, BatchProducerService};
pub use future::ProducerFuture;
pub use layer::ProducerLayer;
pub use on_inject::{OnInject, SpanEvent};
pub use service::ProducerService;
