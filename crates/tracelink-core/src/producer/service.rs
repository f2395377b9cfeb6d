use std::task::{Context as TaskContext, Poll};

use opentelemetry::context::FutureExt;
use opentelemetry::Context;
use tower::Service;

use crate::error_type::ClassifyError;
use crate::instrumentation::{Instrumentation, PublishOperation};
use crate::message::{OutgoingMessage, PublishResponse};
use crate::producer::{OnInject, ProducerFuture};

/// The service made by [`ProducerLayer`](crate::ProducerLayer).
#[derive(Debug, Clone)]
pub struct ProducerService<S, C, P = ()> {
    pub(crate) inner: S,
    pub(crate) instrumentation: Instrumentation,
    pub(crate) classify: C,
    pub(crate) on_inject: P,
}

impl<S, C, P> ProducerService<S, C, P> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, P, M> Service<M> for ProducerService<S, C, P>
where
    S: Service<M>,
    S::Response: PublishResponse,
    C: ClassifyError<S::Error> + Clone,
    P: OnInject<M>,
    M: OutgoingMessage,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ProducerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut message: M) -> Self::Future {
        let operation = self.instrumentation.start_publish(
            &mut message,
            &Context::current(),
            PublishOperation::Send,
        );
        let cx = operation.context().clone();
        if let Some((name, attributes)) = self.on_inject.on_inject(&mut message, &cx) {
            operation.event_with(name, attributes);
        }
        let inner = {
            let _guard = cx.clone().attach();
            self.inner.call(message)
        };
        ProducerFuture::new(inner.with_context(cx), operation, self.classify.clone())
    }
}
