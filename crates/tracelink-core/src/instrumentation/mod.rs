//! The shared configuration behind every layer and consumer, and the operations it starts.
//!
//! One concept per file: [`builder`] (building an [`Instrumentation`]), `extract` (reading the
//! producer's context from headers), `capture` (header capture and its credential filter),
//! `attributes` (assembling span and metric attributes), `start` (the one path every span
//! starts through), `operations` (the publish, process, receive and settle operations), and
//! `operation` (an operation in flight, ended exactly once).

mod attributes;
mod builder;
mod capture;
mod extract;
mod operation;
mod operations;
mod start;

use std::fmt;
use std::sync::Arc;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::{Context, Key, KeyValue};

use crate::baggage_policy::BaggagePolicy;
use crate::link_mode::LinkMode;
use crate::message::{MessagingSystem, OutgoingMessage};
use crate::metrics::Metrics;
use crate::propagation::W3cCompositePropagator;
use crate::span_name::SpanName;

pub use builder::InstrumentationBuilder;
pub(crate) use operation::Operation;
pub use operation::{ClientSpan, ReceiveSpan, SettleSpan, CANCELLED};
pub(crate) use operations::PublishOperation;

/// Shared, cheaply clonable configuration of tracelink's layers: which system they instrument,
/// where spans and metrics go, how contexts propagate and relate.
///
/// Built with [`Instrumentation::builder`]; [`Instrumentation::new`] takes every default. The
/// tracer and meter come from the global providers *at build time*, so install those first.
#[derive(Clone)]
pub struct Instrumentation {
    inner: Arc<Inner>,
    // Outside `inner` so that `with_link_mode` is a cheap copy (request/reply responders need
    // the parent mode on an otherwise shared configuration).
    link_mode: LinkMode,
}

struct Inner {
    system: MessagingSystem,
    tracer: BoxedTracer,
    /// The tracer comes from the API's `NoopTracerProvider`: no span can ever be recorded, so
    /// the message paths build none (contexts still propagate, metrics are still recorded).
    tracing_off: bool,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    /// Set when `propagator` is tracelink's W3C propagator (alone or composed): inject then
    /// writes `traceparent` borrowed, and extract skips the generic bounds check.
    w3c: Option<W3cCompositePropagator>,
    span_name: SpanName,
    /// Headers recorded as attributes, each with its attribute key.
    captured_headers: Vec<(String, Key)>,
    baggage_policy: BaggagePolicy,
    create_spans: bool,
    metrics: Metrics,
    meter: opentelemetry::metrics::Meter,
    /// `messaging.system`, `server.address`, `server.port`: on every span and metric.
    common: Vec<KeyValue>,
    client_id: Option<KeyValue>,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field("system", &self.inner.system)
            .field("link_mode", &self.link_mode)
            .field("span_name", &self.inner.span_name)
            .field("baggage_policy", &self.inner.baggage_policy)
            .field("custom_propagator", &self.inner.propagator.is_some())
            .finish_non_exhaustive()
    }
}

impl Instrumentation {
    /// Every default: global tracer, meter and propagator; [`LinkMode::Link`].
    pub fn new(system: MessagingSystem) -> Self {
        Self::builder(system).build()
    }

    /// Starts a builder for `system`.
    pub fn builder(system: MessagingSystem) -> InstrumentationBuilder {
        InstrumentationBuilder::new(system)
    }

    /// The instrumented system.
    pub fn system(&self) -> &MessagingSystem {
        &self.inner.system
    }

    /// The configured link mode.
    pub fn link_mode(&self) -> LinkMode {
        self.link_mode
    }

    /// The same instrumentation with another link mode (say, [`LinkMode::Parent`] for a
    /// request/reply responder, whose caller waits for it).
    pub fn with_link_mode(&self, mode: LinkMode) -> Self {
        Self {
            inner: self.inner.clone(),
            link_mode: mode,
        }
    }

    /// The header names the configured (or global) propagator reads and writes, e.g.
    /// `traceparent`, `tracestate`, `baggage`: what a consumer must ask a broker for (SQS
    /// `MessageAttributeNames`) and what counts against a header budget.
    pub fn fields(&self) -> Vec<String> {
        match &self.inner.propagator {
            Some(p) => p.fields().map(str::to_owned).collect(),
            None => global::get_text_map_propagator(|p| p.fields().map(str::to_owned).collect()),
        }
    }

    /// The meter the layers record with, for adapters' own instruments.
    pub fn meter(&self) -> &opentelemetry::metrics::Meter {
        &self.inner.meter
    }

    /// Injects `cx` through the configured (or global) propagator.
    pub fn inject(&self, cx: &Context, injector: &mut dyn opentelemetry::propagation::Injector) {
        match &self.inner.propagator {
            Some(p) => p.inject_context(cx, injector),
            None => global::get_text_map_propagator(|p| p.inject_context(cx, injector)),
        }
    }

    /// Injects `cx` into `message`'s headers as the producer layers do. When the configured
    /// propagator is tracelink's [`W3cTraceContextPropagator`](crate::propagation::W3cTraceContextPropagator)
    /// (alone or [`followed_by`](crate::propagation::W3cTraceContextPropagator::followed_by)
    /// others), `traceparent` goes through [`OutgoingMessage::with_str_injector`] borrowed from
    /// a stack buffer; otherwise through [`OutgoingMessage::with_headers_mut`] and
    /// [`inject`](Self::inject).
    pub fn inject_message<M: OutgoingMessage + ?Sized>(&self, cx: &Context, message: &mut M) {
        match &self.inner.w3c {
            Some(w3c) => {
                message.with_str_injector(&mut |injector| w3c.inject_context_str(cx, injector))
            }
            None => message.with_headers_mut(&mut |injector| self.inject(cx, injector)),
        }
    }

    pub(crate) fn create_spans(&self) -> bool {
        self.inner.create_spans
    }
}
