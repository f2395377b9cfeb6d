//! The consume lifecycle, owned by the core: every adapter's consumer is a [`Consumer`] over
//! its client's [`Source`].
//!
//! ```text
//!  receive (one or a batch) ─► [receive span] ─► process span (handler) ─► outcome ─► OnFailure
//!       ▲                                                                             │
//!       └── concurrency bound; shutdown: stop receiving, drain and settle in flight ◄──┘
//!                                   settle: ack / nack / commit / delete ─► [settle span]
//! ```
//!
//! An adapter implements [`Source`] (its client's receive call, its messages' ordering keys)
//! and [`Settler`] (its client's settle calls for each [`Settlement`]); the spans, metrics,
//! failure policy, concurrency, shutdown and builder names live here, so every adapter's
//! consumer has the same shape and the same spans.

mod consumer;
mod error;
mod policy;
mod settle;
mod source;

pub use consumer::{BatchConfig, Consumer};
pub use error::ConsumeError;
pub use policy::{OnFailure, Settlement};
pub use source::{Received, Settler, Source};
