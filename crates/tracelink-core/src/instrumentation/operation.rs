//! One instrumented operation in flight, ended exactly once; and the CLIENT spans consumers
//! hold.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;

use super::Instrumentation;
use crate::metrics::MetricSet;

/// `error.type` recorded when an operation's future is dropped before it completed.
pub const CANCELLED: &str = "cancelled";

/// One instrumented operation in flight: its span (inside `cx`), start time and metric
/// attributes. Ends the span exactly once: on success, on failure, or when dropped.
pub(crate) struct Operation {
    instrumentation: Instrumentation,
    cx: Context,
    /// When the operation started: the span's start time and the metric's, from one clock
    /// read (and one more at the end), where the SDK and the metric would otherwise read the
    /// clock twice each.
    started: SystemTime,
    metric: Option<(Arc<MetricSet>, u64)>,
    /// Whether `cx` holds a span of this operation's own (not with tracing off, where `cx` is
    /// the parent's context and its span must be left alone).
    own_span: bool,
    finished: bool,
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("span_context", self.cx.span().span_context())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Operation {
    pub(super) fn new(
        instrumentation: Instrumentation,
        cx: Context,
        metric: Option<(Arc<MetricSet>, u64)>,
        started: SystemTime,
    ) -> Self {
        Self {
            instrumentation,
            cx,
            started,
            metric,
            own_span: true,
            finished: false,
        }
    }

    /// An operation that records its metric only: `cx` is its parent's context.
    pub(super) fn without_span(
        instrumentation: Instrumentation,
        cx: Context,
        metric: Option<(Arc<MetricSet>, u64)>,
        started: SystemTime,
    ) -> Self {
        let mut operation = Self::new(instrumentation, cx, metric, started);
        operation.own_span = false;
        operation
    }

    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    /// Adds an event to the operation's span.
    pub(crate) fn event(&self, name: &'static str) {
        self.event_with(name, Vec::new());
    }

    /// Adds an event with attributes to the operation's span.
    pub(crate) fn event_with(&self, name: &'static str, attributes: Vec<KeyValue>) {
        if self.own_span {
            self.cx.span().add_event(name, attributes);
        }
    }

    pub(crate) fn succeed(mut self, attributes: Vec<KeyValue>) {
        if self.own_span && !attributes.is_empty() {
            self.cx.span().set_attributes(attributes);
        }
        self.finish(None);
    }

    pub(crate) fn fail(mut self, error_type: Cow<'static, str>) {
        self.finish(Some(error_type));
    }

    fn finish(&mut self, error_type: Option<Cow<'static, str>>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let ended = SystemTime::now();
        if self.own_span {
            let span = self.cx.span();
            if let Some(error_type) = &error_type {
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.clone()));
                span.set_status(Status::error(error_type.clone()));
            }
            span.end_with_timestamp(ended);
        }
        if let Some((set, count)) = self.metric.take() {
            // The wall clock may step back meanwhile: such an operation counts as instant.
            let seconds = ended
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs_f64();
            self.instrumentation
                .inner
                .metrics
                .record(&set, count, seconds, error_type);
        }
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        self.finish(Some(Cow::Borrowed(CANCELLED)));
    }
}

/// A CLIENT span of a consumer: `receive` from [`Instrumentation::receive_span`], or a settle
/// span (`ack`, `nack`, `delete`, ...) from [`Instrumentation::settle_span`].
///
/// End it with [`end`](ClientSpan::end) or [`fail`](ClientSpan::fail); dropping it ends it as
/// cancelled.
#[derive(Debug)]
pub struct ClientSpan {
    pub(super) operation: Operation,
}

/// The CLIENT `receive` span of a pull consumer.
pub type ReceiveSpan = ClientSpan;

/// A CLIENT settle span.
pub type SettleSpan = ClientSpan;

impl ClientSpan {
    /// The context holding the span, to parent other spans on it.
    pub fn context(&self) -> &Context {
        self.operation.context()
    }

    /// Ends the span successfully.
    pub fn end(self) {
        self.operation.succeed(Vec::new());
    }

    /// Ends the span with status Error and `error.type`.
    pub fn fail(self, error_type: impl Into<Cow<'static, str>>) {
        self.operation.fail(error_type.into());
    }
}
