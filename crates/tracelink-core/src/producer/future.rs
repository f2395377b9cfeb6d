use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use opentelemetry::context::WithContext;
use pin_project_lite::pin_project;

use crate::error_type::ClassifyError;
use crate::instrumentation::Operation;
use crate::message::PublishResponse;

pin_project! {
    /// The response future of [`ProducerService`](crate::ProducerService): polls the inner
    /// future inside the producer span's context and ends the span when it resolves or is dropped.
    pub struct ProducerFuture<F, C> {
        #[pin]
        inner: WithContext<F>,
        operation: Option<Operation>,
        classify: C,
    }
}

impl<F, C> ProducerFuture<F, C> {
    pub(crate) fn new(inner: WithContext<F>, operation: Operation, classify: C) -> Self {
        Self {
            inner,
            operation: Some(operation),
            classify,
        }
    }
}

impl<F, C> std::fmt::Debug for ProducerFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerFuture")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<F, T, E, C> Future for ProducerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    T: PublishResponse,
    C: ClassifyError<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(operation) = this.operation.take() {
            match &result {
                Ok(response) => {
                    let mut attributes = Vec::new();
                    response.attributes(&mut attributes);
                    operation.succeed(attributes);
                }
                Err(err) => operation.fail(this.classify.classify(err)),
            }
        }
        Poll::Ready(result)
    }
}
