use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use opentelemetry::context::FutureExt;
use opentelemetry::Context;
use tower::{Layer, Service};

use crate::consumer::ConsumerFuture;
use crate::error_type::{ClassifyError, DefaultErrorType};
use crate::instrumentation::Instrumentation;
use crate::message::{IncomingMessage, MessagingSystem};

/// Wraps a handler of message batches (`Vec<M>`) in one CONSUMER `process` span per batch, with
/// one span link per message that carried a valid context (each link carrying that message's
/// id, partition and system attributes) and `messaging.batch.message_count`.
///
/// A batch span has several producers, so it never takes one as parent, whatever the
/// [`LinkMode`](crate::LinkMode): its parent is the ambient span, if any. An empty batch is
/// passed through without a span.
#[derive(Debug, Clone)]
pub struct BatchConsumerLayer<C = DefaultErrorType> {
    instrumentation: Instrumentation,
    classify: C,
}

impl BatchConsumerLayer {
    /// A layer with every default for `system`.
    pub fn new(system: MessagingSystem) -> Self {
        Self::from(Instrumentation::new(system))
    }
}

impl From<Instrumentation> for BatchConsumerLayer {
    fn from(instrumentation: Instrumentation) -> Self {
        Self {
            instrumentation,
            classify: DefaultErrorType,
        }
    }
}

impl<C> BatchConsumerLayer<C> {
    /// Classifies handler errors with `classify`.
    pub fn with_error_type<C2>(self, classify: C2) -> BatchConsumerLayer<C2> {
        BatchConsumerLayer {
            instrumentation: self.instrumentation,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for BatchConsumerLayer<C> {
    type Service = BatchConsumerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchConsumerService {
            inner,
            instrumentation: self.instrumentation.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// The service made by [`BatchConsumerLayer`].
#[derive(Debug, Clone)]
pub struct BatchConsumerService<S, C> {
    inner: S,
    instrumentation: Instrumentation,
    classify: C,
}

impl<S, C, M> Service<Vec<M>> for BatchConsumerService<S, C>
where
    S: Service<Vec<M>>,
    C: ClassifyError<S::Error> + Clone,
    M: IncomingMessage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BatchConsumerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, messages: Vec<M>) -> Self::Future {
        self.call_in_span(messages).1
    }
}

impl<S, C> BatchConsumerService<S, C> {
    /// Calls the handler inside the batch's `process` span; also returns the context holding
    /// that span (the ambient context for an empty batch): the parent of settle spans.
    pub(crate) fn call_in_span<M>(
        &mut self,
        messages: Vec<M>,
    ) -> (Context, BatchConsumerFuture<S::Future, C>)
    where
        S: Service<Vec<M>>,
        C: Clone,
        M: IncomingMessage,
    {
        let operation = self.instrumentation.start_batch_process(&messages);
        let cx = operation
            .as_ref()
            .map(|op| op.context().clone())
            .unwrap_or_else(Context::current);
        let inner = {
            let _guard = cx.clone().attach();
            self.inner.call(messages)
        };
        let future = BatchConsumerFuture {
            inner: ConsumerFuture::new(
                inner.with_context(cx.clone()),
                operation,
                self.classify.clone(),
            ),
        };
        (cx, future)
    }
}

pin_project! {
    /// The response future of [`BatchConsumerService`]: polls the handler inside the batch's
    /// `process` span and ends the span when the handler resolves (status Error and
    /// `error.type` on failure) or is dropped (`error.type` = `cancelled`).
    pub struct BatchConsumerFuture<F, C> {
        #[pin]
        inner: ConsumerFuture<F, C>,
    }
}

impl<F, C> BatchConsumerFuture<F, C> {
    pub(crate) fn with_failure_event(self, name: Option<&'static str>) -> Self {
        Self {
            inner: self.inner.with_failure_event(name),
        }
    }
}

impl<F, C> std::fmt::Debug for BatchConsumerFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConsumerFuture")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<F, T, E, C> Future for BatchConsumerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
