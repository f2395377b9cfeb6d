use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use opentelemetry::context::WithContext;
use pin_project_lite::pin_project;

use crate::error_type::ClassifyError;
use crate::instrumentation::Operation;

pin_project! {
    /// The response future of [`ConsumerService`](crate::ConsumerService) and
    /// [`BatchConsumerService`](crate::BatchConsumerService): polls the handler inside the process
    /// span's context and ends the span when the handler resolves (status Error and `error.type`
    /// on failure) or is dropped (`error.type` = `cancelled`).
    pub struct ConsumerFuture<F, C> {
        #[pin]
        inner: WithContext<F>,
        operation: Option<Operation>,
        classify: C,
        failure_event: Option<&'static str>,
    }
}

impl<F, C> ConsumerFuture<F, C> {
    pub(crate) fn new(inner: WithContext<F>, operation: Option<Operation>, classify: C) -> Self {
        Self {
            inner,
            operation,
            classify,
            failure_event: None,
        }
    }

    /// Adds an event of this name to the span when the handler fails (the consume driver
    /// names what its failure policy does with the message).
    pub(crate) fn with_failure_event(mut self, name: Option<&'static str>) -> Self {
        self.failure_event = name;
        self
    }
}

impl<F, C> std::fmt::Debug for ConsumerFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerFuture")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, C> Future for ConsumerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(operation) = this.operation.take() {
            match &result {
                Ok(_) => operation.succeed(Vec::new()),
                Err(err) => {
                    if let Some(name) = this.failure_event {
                        operation.event(name);
                    }
                    operation.fail(this.classify.classify(err))
                }
            }
        }
        Poll::Ready(result)
    }
}
