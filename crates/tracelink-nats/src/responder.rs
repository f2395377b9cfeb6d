//! Request/reply: the responder side.

use std::borrow::Cow;
use std::future::poll_fn;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracelink_core::{
    ConsumerLayer, ConsumerService, DefaultErrorType, ErrorType, Instrumentation, LinkMode,
    ProducerLayer, ProducerService,
};

use crate::error::Error;
use crate::message::{Delivery, Publish};
use crate::publish::Publisher;

/// Serves NATS requests: wraps a handler that turns a request [`Delivery`] into the reply payload
/// ([`Bytes`]) in a CONSUMER `process {subject}` span that is a **child** of the requester's span
/// (the requester waits for the answer, so this is one causal chain, not a link; the link is
/// kept too), and publishes the reply from inside that span, with a PRODUCER span
/// `publish _INBOX.*` of its own.
///
/// The layer always uses [`LinkMode::Parent`], whatever the given instrumentation says (the
/// rest of its configuration is kept).
///
/// ```no_run
/// # use tower::{service_fn, Layer};
/// # use tracelink_core::{Instrumentation, opentelemetry::trace::TraceContextExt};
/// # use tracelink_nats::{ResponderLayer, Subscription, Delivery};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let layer = ResponderLayer::new(
///     client.clone(),
///     &Instrumentation::new(tracelink_nats::messaging_system("nats://127.0.0.1:4222")),
/// );
/// let handler = layer.layer(service_fn(|request: Delivery| async move {
///     Ok::<_, std::convert::Infallible>(request.message.payload.clone())
/// }));
/// Subscription::subscribe(&client, "echo").await?.run(handler).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ResponderLayer {
    instrumentation: Instrumentation,
    replier: ProducerService<Publisher, DefaultErrorType>,
}

impl ResponderLayer {
    /// A layer replying through `client`, with spans per `instrumentation` in
    /// [`LinkMode::Parent`].
    pub fn new(client: async_nats::Client, instrumentation: &Instrumentation) -> Self {
        let instrumentation = instrumentation.with_link_mode(LinkMode::Parent);
        let replier = ProducerLayer::from(instrumentation.clone()).layer(Publisher::new(client));
        Self {
            instrumentation,
            replier,
        }
    }

    /// The instrumentation the layer uses (in [`LinkMode::Parent`]).
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }
}

impl<S> Layer<S> for ResponderLayer {
    type Service = ConsumerService<Responder<S>, DefaultErrorType>;

    fn layer(&self, inner: S) -> Self::Service {
        ConsumerLayer::from(self.instrumentation.clone()).layer(Responder {
            inner,
            replier: self.replier.clone(),
        })
    }
}

/// The handler wrapper made by [`ResponderLayer`]: calls the handler, then publishes its answer
/// to the request's reply subject.
#[derive(Debug, Clone)]
pub struct Responder<S> {
    inner: S,
    replier: ProducerService<Publisher, DefaultErrorType>,
}

/// Why a [`Responder`] did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError<E> {
    /// The handler failed; no reply was sent (the requester times out).
    #[error("request handler failed: {0}")]
    Handler(#[source] E),
    /// Publishing the reply failed, or the message had no reply subject.
    #[error(transparent)]
    Reply(#[from] Error),
}

impl<E: ErrorType> ErrorType for ResponderError<E> {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            ResponderError::Handler(e) => e.error_type(),
            ResponderError::Reply(e) => e.error_type(),
        }
    }
}

impl<S> Service<Delivery> for Responder<S>
where
    S: Service<Delivery, Response = Bytes>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = ();
    type Error = ResponderError<S::Error>;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ResponderError::Handler)
    }

    fn call(&mut self, request: Delivery) -> Self::Future {
        let Some(reply) = request.message.reply.clone() else {
            return Box::pin(async { Err(Error::NoReplySubject.into()) });
        };
        let answer = self.inner.call(request);
        let mut replier = self.replier.clone();
        Box::pin(async move {
            let payload = answer.await.map_err(ResponderError::Handler)?;
            // Polled inside the process span's context: the reply's span is its child.
            poll_fn(|cx| replier.poll_ready(cx)).await?;
            replier.call(Publish::new(reply, payload)).await?;
            Ok(())
        })
    }
}
