//! The operations the layers and the consume driver start: publish (`send`, `create`),
//! `process` (one message or a batch), `receive` and settle.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Span, SpanKind, TraceContextExt};
use opentelemetry::{Context, KeyValue};

use super::attributes::push_message_attributes;
use super::operation::{ClientSpan, Operation, ReceiveSpan, SettleSpan};
use super::start::{Start, Started};
use super::Instrumentation;
use crate::message::{Destination, IncomingMessage, OutgoingMessage};
use crate::metrics::{MetricKind, MetricSet};

#[derive(Debug, Clone, Copy)]
pub(crate) enum PublishOperation {
    Send,
    Create,
}

impl Instrumentation {
    fn operation(
        &self,
        cx: Context,
        metric: Option<(Arc<MetricSet>, u64)>,
        at: SystemTime,
    ) -> Operation {
        Operation::new(self.clone(), cx, metric, at)
    }

    /// Starts the PRODUCER span for `message` (child of `parent`) and injects its context into
    /// the message's headers.
    pub(crate) fn start_publish<M: OutgoingMessage + ?Sized>(
        &self,
        message: &mut M,
        parent: &Context,
        operation: PublishOperation,
    ) -> Operation {
        let at = SystemTime::now();
        let publish = self.inner.system.publish_operation;
        let (operation_type, operation_name, metric) = match operation {
            PublishOperation::Send => ("send", publish, Some((MetricKind::Publish, 1))),
            PublishOperation::Create => ("create", "create", None),
        };
        if self.inner.tracing_off {
            // What a no-op span would carry: the parent's context.
            self.inject_message(parent, message);
            let metric = metric.map(|(kind, count)| {
                let destination = message.destination();
                let set = self
                    .metric_values(kind, operation_name, &destination, [None, None])
                    .set;
                (set, count)
            });
            return Operation::without_span(self.clone(), parent.clone(), metric, at);
        }
        let Started { mut span, metric } = {
            let destination = message.destination();
            let mut start = Start::new(
                SpanKind::Producer,
                operation_type,
                operation_name,
                &destination,
                parent,
                at,
            );
            start.metric = metric;
            self.start(start)
        };
        if span.is_recording() {
            let mut details = Vec::with_capacity(8);
            details.extend(self.inner.client_id.iter().cloned());
            push_message_attributes(
                &mut details,
                message.message_id().map(Cow::Borrowed),
                message.conversation_id(),
                message.body_size(),
                message.partition_id(),
            );
            message.attributes(&mut details);
            span.set_attributes(details);
        }
        let cx = parent.with_span(span);
        self.inject_message(&cx, message);
        self.operation(cx, metric, at)
    }

    /// Starts the `send` span of a batch publish: PRODUCER, or CLIENT when every message gets a
    /// `create` span of its own.
    pub(crate) fn start_batch_send(
        &self,
        destination: &Destination<'_>,
        count: usize,
        parent: &Context,
    ) -> Operation {
        let at = SystemTime::now();
        let kind = match self.inner.create_spans {
            true => SpanKind::Client,
            false => SpanKind::Producer,
        };
        let mut start = Start::new(
            kind,
            "send",
            self.inner.system.publish_operation,
            destination,
            parent,
            at,
        );
        start.metric = Some((MetricKind::Publish, count as u64));
        start.client_id = true;
        start.batch = count;
        let Started { span, metric } = self.start(start);
        self.operation(parent.with_span(span), metric, at)
    }

    /// Starts the CONSUMER `process` span for one message; its context is what the handler
    /// runs in (with the producer's baggage, per the policy).
    pub(crate) fn start_process<M: IncomingMessage + ?Sized>(&self, message: &M) -> Operation {
        let at = SystemTime::now();
        let ambient = Context::current();
        let mut captured = Vec::new();
        let (producer, baggage) = self.read_message(message, &mut captured);
        let destination = message.destination();
        if self.inner.tracing_off {
            // What the handler would see under a no-op span: the producer's context in parent
            // mode, the ambient one otherwise, and the baggage the policy lets through.
            let parent = match (self.link_mode, producer) {
                (crate::LinkMode::Parent, Some(sc)) => ambient.with_remote_span_context(sc),
                _ => ambient.clone(),
            };
            let set = self
                .metric_values(
                    MetricKind::Process,
                    "process",
                    &destination,
                    [message.consumer_group(), message.subscription_name()],
                )
                .set;
            let cx = Self::with_baggage(parent, &ambient, baggage);
            return Operation::without_span(self.clone(), cx, Some((set, 1)), at);
        }
        let (parent, links) = self.process_relations(&ambient, producer);
        let mut start = Start::new(
            SpanKind::Consumer,
            "process",
            "process",
            &destination,
            &parent,
            at,
        );
        start.metric = Some((MetricKind::Process, 1));
        start.consumer = [message.consumer_group(), message.subscription_name()];
        start.client_id = true;
        start.links = links;
        start.attributes = captured;
        let Started { mut span, metric } = self.start(start);
        if span.is_recording() {
            let mut details = Vec::with_capacity(8);
            self.message_attributes(message, &mut details);
            span.set_attributes(details);
        }
        let cx = Self::with_baggage(parent.with_span(span), &ambient, baggage);
        self.operation(cx, metric, at)
    }

    /// Starts one CONSUMER `process` span for a batch, with one link per message that carried a
    /// valid context; a child of the ambient span whatever the link mode (a batch has several
    /// producers). Empty batches get no span.
    pub(crate) fn start_batch_process<M: IncomingMessage>(
        &self,
        messages: &[M],
    ) -> Option<Operation> {
        let first = messages.first()?;
        let at = SystemTime::now();
        let ambient = Context::current();
        let destination = first.destination();
        let mut start = Start::new(
            SpanKind::Consumer,
            "process",
            "process",
            &destination,
            &ambient,
            at,
        );
        start.metric = Some((MetricKind::Process, messages.len() as u64));
        start.consumer = [first.consumer_group(), first.subscription_name()];
        start.client_id = true;
        start.batch = messages.len();
        start.links = self.links(messages);
        let Started { span, metric } = self.start(start);
        Some(self.operation(ambient.with_span(span), metric, at))
    }

    /// Starts the CLIENT `receive {destination}` span of a pull consumer, from `started` (when the
    /// poll began), with a link to each received message that carried a valid context. Returns
    /// `None` for an empty poll: no span is recorded for it.
    pub fn receive_span<M: IncomingMessage>(
        &self,
        destination: Destination<'_>,
        started: SystemTime,
        messages: &[M],
    ) -> Option<ReceiveSpan> {
        let first = messages.first()?;
        Some(self.start_receive(
            destination,
            started,
            [first.consumer_group(), first.subscription_name()],
            messages.len(),
            self.links(messages),
        ))
    }

    /// Records the CLIENT `receive {destination}` span of a poll that failed (from `started`,
    /// when the poll began, to now) with status Error and `error.type`, and its
    /// `messaging.client.operation.duration`.
    pub fn receive_failed(
        &self,
        destination: Destination<'_>,
        started: SystemTime,
        error_type: impl Into<Cow<'static, str>>,
    ) {
        self.start_receive(destination, started, [None, None], 0, Vec::new())
            .fail(error_type);
    }

    fn start_receive(
        &self,
        destination: Destination<'_>,
        at: SystemTime,
        consumer: [Option<&str>; 2],
        count: usize,
        links: Vec<opentelemetry::trace::Link>,
    ) -> ReceiveSpan {
        let ambient = Context::current();
        let mut start = Start::new(
            SpanKind::Client,
            "receive",
            "receive",
            &destination,
            &ambient,
            at,
        );
        start.metric = Some((MetricKind::Receive, 0));
        start.consumer = consumer;
        start.client_id = true;
        start.batch = count;
        start.links = links;
        let Started { span, metric } = self.start(start);
        // The poll started before we were called: the span and the metric measure from there.
        ClientSpan {
            operation: self.operation(ambient.with_span(span), metric, at),
        }
    }

    /// Starts a CLIENT settle span, `{operation_name} {destination}` (`ack`, `nack`, `delete`,
    /// `commit`, ...), as a child of `parent` (the message's process span, say), with
    /// `messaging.operation.type` = `settle`, the instrumentation's common attributes and
    /// `attributes` (delivery tag, message id, ...). Its duration goes to
    /// `messaging.client.operation.duration`.
    pub fn settle_span(
        &self,
        operation_name: &'static str,
        destination: Destination<'_>,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> SettleSpan {
        let at = SystemTime::now();
        let mut start = Start::new(
            SpanKind::Client,
            "settle",
            operation_name,
            &destination,
            parent,
            at,
        );
        start.metric = Some((MetricKind::Receive, 0));
        start.attributes = attributes;
        let Started { span, metric } = self.start(start);
        ClientSpan {
            operation: self.operation(parent.with_span(span), metric, at),
        }
    }
}
