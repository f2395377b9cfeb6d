//! Request/reply: the responder side.

use std::borrow::Cow;
use std::future::poll_fn;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracelink_core::{DefaultErrorType, ErrorType, Instrumentation, LinkMode, ProducerService};

use crate::error::Error;
use crate::message::{NatsDelivery, Publish};
use crate::publish::NatsPublisher;
use crate::source::{NatsConsumer, NatsSource};

/// Serves NATS requests: wraps a handler that turns a request [`NatsDelivery`] into the reply
/// payload ([`Bytes`]) in a [`Responder`], which publishes the answer to the request's reply
/// subject from inside the `process` span, with a PRODUCER span `publish _INBOX.*` of its own.
///
/// Run the responder on the consumer [`consumer`](ResponderLayer::consumer) makes: its `process
/// {subject}` span is a **child** of the requester's span (the requester waits for the answer,
/// so this is one causal chain, not a link; the link is kept too), because that consumer's
/// instrumentation is in [`LinkMode::Parent`], whatever the given instrumentation says (the
/// rest of its configuration is kept).
///
/// ```no_run
/// # use tower::{service_fn, Layer};
/// # use tracelink_core::Instrumentation;
/// # use tracelink_nats::{NatsDelivery, ResponderLayer};
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let instrumentation =
///     Instrumentation::new(tracelink_nats::messaging_system("nats://127.0.0.1:4222"));
/// let responder = ResponderLayer::new(client.clone(), &instrumentation);
/// let handler = responder.layer(service_fn(|request: NatsDelivery| async move {
///     Ok::<_, std::convert::Infallible>(request.message.payload.clone())
/// }));
/// responder
///     .consumer(client.subscribe("echo").await?)
///     .run(handler, std::future::pending::<()>())
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ResponderLayer {
    instrumentation: Instrumentation,
    replier: ProducerService<NatsPublisher, DefaultErrorType>,
}

impl ResponderLayer {
    /// A layer replying through `client`, with spans per `instrumentation` in
    /// [`LinkMode::Parent`].
    pub fn new(client: async_nats::Client, instrumentation: &Instrumentation) -> Self {
        let instrumentation = instrumentation.with_link_mode(LinkMode::Parent);
        let replier = NatsPublisher::new(client).traced(instrumentation.clone());
        Self {
            instrumentation,
            replier,
        }
    }

    /// The consumer to run the responder on: `source` (a subscriber, or a [`NatsSource`] in a
    /// queue group) with this layer's instrumentation, in [`LinkMode::Parent`].
    pub fn consumer(&self, source: impl Into<NatsSource>) -> NatsConsumer {
        NatsConsumer::new(source, self.instrumentation.clone())
    }

    /// The instrumentation the layer uses (in [`LinkMode::Parent`]).
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }
}

impl<S> Layer<S> for ResponderLayer {
    type Service = Responder<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Responder {
            inner,
            replier: self.replier.clone(),
        }
    }
}

/// The handler wrapper made by [`ResponderLayer`]: calls the handler, then publishes its answer
/// to the request's reply subject (a request without one fails with
/// [`Error::NoReplySubject`](crate::Error::NoReplySubject)).
#[derive(Debug, Clone)]
pub struct Responder<S> {
    inner: S,
    replier: ProducerService<NatsPublisher, DefaultErrorType>,
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

impl<S> Service<NatsDelivery> for Responder<S>
where
    S: Service<NatsDelivery, Response = Bytes>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = ();
    type Error = ResponderError<S::Error>;
    type Future = BoxFuture<'static, Result<(), Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ResponderError::Handler)
    }

    fn call(&mut self, request: NatsDelivery) -> Self::Future {
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
