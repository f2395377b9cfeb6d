//! The one path every span starts through.

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Link, SpanKind, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;

use super::attributes::shared;
use super::Instrumentation;
use crate::message::Destination;
use crate::metrics::{MetricKind, MetricSet};

/// What one operation's span and metric are made of.
pub(super) struct Start<'a> {
    pub(super) kind: SpanKind,
    /// `messaging.operation.type`: `send`, `create`, `receive`, `process`, `settle`.
    pub(super) operation_type: &'static str,
    /// `messaging.operation.name`, and the span name's first word.
    pub(super) operation_name: &'static str,
    pub(super) destination: &'a Destination<'a>,
    /// The instruments the operation records, with the messages it counts; `None` records no
    /// metric (a batch's `create` spans: the batch's `send` counts them).
    pub(super) metric: Option<(MetricKind, u64)>,
    /// Consumer group and subscription, for consumer-side operations.
    pub(super) consumer: [Option<&'a str>; 2],
    /// Whether `messaging.client.id` goes on the span.
    pub(super) client_id: bool,
    /// `messaging.batch.message_count`, set when above 1.
    pub(super) batch: usize,
    pub(super) started: SystemTime,
    pub(super) parent: &'a Context,
    pub(super) links: Vec<Link>,
    /// Further attributes known at the start (captured headers, a settle's delivery tag).
    pub(super) attributes: Vec<KeyValue>,
}

impl<'a> Start<'a> {
    /// An operation with no metric, group, client id, batch count, link or further attribute.
    pub(super) fn new(
        kind: SpanKind,
        operation_type: &'static str,
        operation_name: &'static str,
        destination: &'a Destination<'a>,
        parent: &'a Context,
        started: SystemTime,
    ) -> Self {
        Self {
            kind,
            operation_type,
            operation_name,
            destination,
            metric: None,
            consumer: [None, None],
            client_id: false,
            batch: 0,
            started,
            parent,
            links: Vec::new(),
            attributes: Vec::new(),
        }
    }
}

/// A started span and the metric set its operation records into.
pub(super) struct Started {
    pub(super) span: BoxedSpan,
    pub(super) metric: Option<(Arc<MetricSet>, u64)>,
}

impl Instrumentation {
    /// Starts the span of an operation with the attributes samplers may need (the
    /// conventions' required and recommended ones); recording-only details are the caller's.
    pub(super) fn start(&self, start: Start<'_>) -> Started {
        let inner = &*self.inner;
        let mut attributes = Vec::with_capacity(12 + start.attributes.len());
        self.operation_attributes(&mut attributes, start.operation_type, start.operation_name);
        let (metric, destination_name) = match start.metric {
            Some((kind, count)) => {
                let values = self.metric_values(
                    kind,
                    start.operation_name,
                    start.destination,
                    start.consumer,
                );
                attributes.extend(values.consumer.into_iter().flatten());
                (Some((values.set, count)), values.destination)
            }
            None => (None, shared(start.destination.name)),
        };
        self.destination_attributes(&mut attributes, start.destination, destination_name);
        if start.client_id {
            attributes.extend(inner.client_id.iter().cloned());
        }
        if start.batch > 1 {
            attributes.push(KeyValue::new(
                attr::MESSAGING_BATCH_MESSAGE_COUNT,
                i64::try_from(start.batch).unwrap_or(i64::MAX),
            ));
        }
        attributes.extend(start.attributes);
        let mut builder = inner
            .tracer
            .span_builder(
                inner
                    .span_name
                    .render(start.operation_name, start.destination),
            )
            .with_kind(start.kind)
            .with_start_time(start.started)
            .with_attributes(attributes);
        if !start.links.is_empty() {
            builder = builder.with_links(start.links);
        }
        Started {
            span: inner.tracer.build_with_context(builder, start.parent),
            metric,
        }
    }
}
