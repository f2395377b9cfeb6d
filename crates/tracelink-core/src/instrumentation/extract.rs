//! Reading the producer's context from a message's headers.

use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::global;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{Link, SpanContext, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::Instrumentation;
use crate::carrier::Bounded;
use crate::link_mode::LinkMode;
use crate::message::IncomingMessage;

impl Instrumentation {
    /// Extracts a context from `extractor` through the configured (or global) propagator,
    /// relative to an empty context so nothing ambient leaks in. Values longer than
    /// [`MAX_HEADER_VALUE_LEN`](crate::carrier::MAX_HEADER_VALUE_LEN) read as absent.
    pub fn extract(&self, extractor: &dyn Extractor) -> Context {
        if let Some(w3c) = &self.inner.w3c {
            return w3c.extract_bounded(extractor);
        }
        let bounded = Bounded(extractor);
        let empty = Context::new();
        match &self.inner.propagator {
            Some(p) => p.extract_with_context(&empty, &bounded),
            None => global::get_text_map_propagator(|p| p.extract_with_context(&empty, &bounded)),
        }
    }

    /// The producer's span context carried by `message`, when it is valid.
    pub fn producer_context<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
    ) -> Option<SpanContext> {
        let mut found = None;
        message.with_headers(&mut |ex| found = self.extract_producer(ex).0);
        found
    }

    /// The producer's span context (when valid) and the baggage the policy lets through, as
    /// [`extract`](Self::extract) reads them. With tracelink's W3C propagator alone there is no
    /// baggage to read, and the span context comes without building a [`Context`].
    fn extract_producer(
        &self,
        extractor: &dyn Extractor,
    ) -> (Option<SpanContext>, Option<Baggage>) {
        if let Some(alone) = self
            .inner
            .w3c
            .as_ref()
            .and_then(|w3c| w3c.extract_span_context_alone(extractor))
        {
            return (alone, None);
        }
        let cx = self.extract(extractor);
        let span = cx.span();
        let sc = span.span_context();
        let producer = sc.is_valid().then(|| sc.clone());
        (producer, self.inner.baggage_policy.apply(cx.baggage()))
    }

    /// Extracts the producer context, applies the baggage policy and captures headers.
    pub(super) fn read_message<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
        captured: &mut Vec<KeyValue>,
    ) -> (Option<SpanContext>, Option<Baggage>) {
        let mut producer = None;
        let mut baggage = None;
        message.with_headers(&mut |ex| {
            (producer, baggage) = self.extract_producer(ex);
            self.capture_headers(ex, captured);
        });
        (producer, baggage)
    }

    /// The parent of a process span and its links, per the link mode: the producer is always
    /// linked; in [`LinkMode::Parent`] it is also the parent, and an ambient span (which it
    /// displaces as parent) becomes a link, as the conventions ask.
    pub(super) fn process_relations(
        &self,
        ambient: &Context,
        producer: Option<SpanContext>,
    ) -> (Context, Vec<Link>) {
        let Some(producer) = producer else {
            return (ambient.clone(), Vec::new());
        };
        match self.link_mode {
            LinkMode::Link => (ambient.clone(), vec![Link::with_context(producer)]),
            LinkMode::Parent => {
                let parent = ambient.with_remote_span_context(producer.clone());
                let mut links = vec![Link::with_context(producer)];
                let displaced = ambient.span().span_context().clone();
                if displaced.is_valid() {
                    links.push(Link::with_context(displaced));
                }
                (parent, links)
            }
        }
    }

    /// The handler's context: the process span's, with the producer's baggage (per the policy)
    /// over the ambient baggage.
    pub(super) fn with_baggage(
        cx: Context,
        ambient: &Context,
        baggage: Option<Baggage>,
    ) -> Context {
        match baggage {
            None => cx,
            Some(incoming) => {
                let mut merged = crate::baggage_policy::copy(ambient.baggage());
                for (key, (value, metadata)) in incoming.iter() {
                    merged.insert_with_metadata(key.clone(), value.clone(), metadata.clone());
                }
                cx.with_baggage(merged)
            }
        }
    }

    /// One link per message that carried a valid context, with the message's own attributes.
    pub(super) fn links<M: IncomingMessage>(&self, messages: &[M]) -> Vec<Link> {
        messages
            .iter()
            .filter_map(|message| {
                let sc = self.producer_context(message)?;
                let mut attributes = Vec::new();
                self.message_attributes(message, &mut attributes);
                Some(Link::new(sc, attributes, 0))
            })
            .collect()
    }
}
