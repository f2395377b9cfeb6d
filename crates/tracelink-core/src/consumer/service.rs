use std::task::{Context as TaskContext, Poll};

use opentelemetry::context::FutureExt;
use opentelemetry::Context;
use tower::Service;

use crate::consumer::ConsumerFuture;
use crate::error_type::ClassifyError;
use crate::instrumentation::Instrumentation;
use crate::message::IncomingMessage;

/// The service made by [`ConsumerLayer`](crate::ConsumerLayer).
#[derive(Debug, Clone)]
pub struct ConsumerService<S, C> {
    pub(crate) inner: S,
    pub(crate) instrumentation: Instrumentation,
    pub(crate) classify: C,
}

impl<S, C> ConsumerService<S, C> {
    /// The wrapped handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, M> Service<M> for ConsumerService<S, C>
where
    S: Service<M>,
    C: ClassifyError<S::Error> + Clone,
    M: IncomingMessage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ConsumerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: M) -> Self::Future {
        self.call_in_span(message).1
    }
}

impl<S, C> ConsumerService<S, C> {
    /// Calls the handler inside a new `process` span; also returns the context holding that
    /// span (the parent of the message's settle span).
    pub(crate) fn call_in_span<M>(&mut self, message: M) -> (Context, ConsumerFuture<S::Future, C>)
    where
        S: Service<M>,
        C: Clone,
        M: IncomingMessage,
    {
        let operation = self.instrumentation.start_process(&message);
        let cx = operation.context().clone();
        let inner = {
            let _guard = cx.clone().attach();
            self.inner.call(message)
        };
        let future = ConsumerFuture::new(
            inner.with_context(cx.clone()),
            Some(operation),
            self.classify.clone(),
        );
        (cx, future)
    }
}
