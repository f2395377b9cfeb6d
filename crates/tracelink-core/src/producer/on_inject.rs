//! The hook the producer layers call right after injecting a message's context.

use opentelemetry::{Context, KeyValue};

/// A span event a hook asks the producer layers to record: its name and attributes.
pub type SpanEvent = (&'static str, Vec<KeyValue>);

/// Called by [`ProducerLayer`](crate::ProducerLayer) and
/// [`BatchProducerLayer`](crate::BatchProducerLayer) right after a message's context was
/// injected into it, before the inner service sees the message: where an adapter places what
/// the propagator wrote under its broker's rules (SQS's 10-attribute limit, its
/// `AWSTraceHeader`), reading the injected context from `cx` rather than from the headers.
///
/// An event it returns is added to the message's own span (its `send` span; in a batch, its
/// `create` span, or the `send` span without create spans). Implemented by `()` (nothing to do,
/// the default) and by closures `Fn(&mut M, &Context) -> Option<SpanEvent>`.
pub trait OnInject<M> {
    /// Places `message`'s injected context, `cx`; returns an event for its span, if any.
    fn on_inject(&self, message: &mut M, cx: &Context) -> Option<SpanEvent>;
}

impl<M> OnInject<M> for () {
    fn on_inject(&self, _message: &mut M, _cx: &Context) -> Option<SpanEvent> {
        None
    }
}

impl<M, F> OnInject<M> for F
where
    F: Fn(&mut M, &Context) -> Option<SpanEvent>,
{
    fn on_inject(&self, message: &mut M, cx: &Context) -> Option<SpanEvent> {
        self(message, cx)
    }
}
