//! Building an [`Instrumentation`].

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use opentelemetry::global::{self, BoxedTracer, ObjectSafeTracerProvider};
use opentelemetry::metrics::MeterProvider;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;

use super::attributes::shared;
use super::capture::{header_key, is_credential};
use super::{Inner, Instrumentation};
use crate::baggage_policy::BaggagePolicy;
use crate::link_mode::LinkMode;
use crate::message::MessagingSystem;
use crate::metrics::Metrics;
use crate::propagation::{W3cCompositePropagator, W3cTraceContextPropagator};
use crate::span_name::SpanName;

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("tracelink")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

/// Builds an [`Instrumentation`].
pub struct InstrumentationBuilder {
    system: MessagingSystem,
    tracer: Option<BoxedTracer>,
    tracing_off: bool,
    meter: Option<opentelemetry::metrics::Meter>,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    w3c: Option<W3cCompositePropagator>,
    link_mode: LinkMode,
    span_name: SpanName,
    captured_headers: Vec<String>,
    baggage_policy: BaggagePolicy,
    create_spans: bool,
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("system", &self.system)
            .field("link_mode", &self.link_mode)
            .finish_non_exhaustive()
    }
}

impl InstrumentationBuilder {
    pub(super) fn new(system: MessagingSystem) -> Self {
        Self {
            system,
            tracer: None,
            tracing_off: false,
            meter: None,
            propagator: None,
            w3c: None,
            link_mode: LinkMode::default(),
            span_name: SpanName::default(),
            captured_headers: Vec::new(),
            baggage_policy: BaggagePolicy::default(),
            create_spans: true,
        }
    }

    /// Spans go to `provider` instead of the global tracer provider.
    ///
    /// With the API's [`NoopTracerProvider`](opentelemetry::trace::noop::NoopTracerProvider)
    /// (tracing switched off) the layers and consumers build no span at all, where a no-op
    /// tracer would still be handed attributes, a name and a boxed span per message; contexts
    /// still propagate as through a no-op span (the parent's context is injected and handed to
    /// the handler) and metrics are still recorded.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: ObjectSafeTracerProvider + 'static,
    {
        self.tracing_off =
            (provider as &dyn Any).is::<opentelemetry::trace::noop::NoopTracerProvider>();
        self.tracer = Some(BoxedTracer::new(provider.boxed_tracer(scope())));
        self
    }

    /// Metrics go to `provider` instead of the global meter provider.
    pub fn with_meter_provider<P: MeterProvider>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Propagates with `propagator` instead of the global one.
    pub fn with_propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        // tracelink's own W3C propagator is recognised once, here, for the allocation-free path.
        let any: &dyn Any = &propagator;
        self.w3c = if any.is::<W3cTraceContextPropagator>() {
            Some(W3cCompositePropagator::default())
        } else {
            any.downcast_ref::<W3cCompositePropagator>().cloned()
        };
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// How consumer spans relate to the producer's context (default [`LinkMode::Link`]).
    pub fn with_link_mode(mut self, mode: LinkMode) -> Self {
        self.link_mode = mode;
        self
    }

    /// What span names say after the operation (default [`SpanName::Destination`]).
    pub fn with_span_name(mut self, span_name: SpanName) -> Self {
        self.span_name = span_name;
        self
    }

    /// Records the named headers of incoming messages as `messaging.header.<name>` attributes
    /// (names lower-cased). Off by default: headers may carry personal data.
    ///
    /// Names that carry credentials are never captured, even when listed: `authorization`,
    /// `proxy-authorization`, `cookie`, `set-cookie`, and any name containing `password`,
    /// `secret`, `token`, `api-key`, `apikey` or `credential` (ASCII case ignored).
    pub fn with_captured_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.captured_headers = names
            .into_iter()
            .map(Into::into)
            .filter(|name| !is_credential(name))
            .collect();
        self
    }

    /// What to do with baggage from producers (default [`BaggagePolicy::Keep`]).
    pub fn with_baggage_policy(mut self, policy: BaggagePolicy) -> Self {
        self.baggage_policy = policy;
        self
    }

    /// Batch publishes inject the `send` span's context into every message instead of giving
    /// each message a `create` span of its own.
    pub fn without_create_spans(mut self) -> Self {
        self.create_spans = false;
        self
    }

    /// Builds the instrumentation.
    pub fn build(self) -> Instrumentation {
        let tracer = self
            .tracer
            .unwrap_or_else(|| global::tracer_with_scope(scope()));
        let meter = self
            .meter
            .unwrap_or_else(|| global::meter_with_scope(scope()));
        let mut common = vec![KeyValue::new(
            attr::MESSAGING_SYSTEM,
            shared(&self.system.name),
        )];
        if let Some(address) = &self.system.server_address {
            common.push(KeyValue::new(attr::SERVER_ADDRESS, shared(address)));
        }
        if let Some(port) = self.system.server_port {
            common.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
        }
        let client_id = self
            .system
            .client_id
            .clone()
            .map(|id| KeyValue::new(attr::MESSAGING_CLIENT_ID, shared(&id)));
        let captured_headers = self
            .captured_headers
            .into_iter()
            .map(|name| {
                let key = header_key(&name);
                (name, key)
            })
            .collect();
        Instrumentation {
            inner: Arc::new(Inner {
                system: self.system,
                tracer,
                tracing_off: self.tracing_off,
                propagator: self.propagator,
                w3c: self.w3c,
                span_name: self.span_name,
                captured_headers,
                baggage_policy: self.baggage_policy,
                create_spans: self.create_spans,
                metrics: Metrics::new(&meter),
                meter,
                common,
                client_id,
            }),
            link_mode: self.link_mode,
        }
    }
}
