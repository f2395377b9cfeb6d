//! The traced publish service over a lapin [`Channel`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use lapin::{Channel, Confirmation};
use tower::Layer;
use tower::Service;
use tracelink_core::{
    DefaultErrorType, Instrumentation, ProducerLayer, ProducerService, PublishResponse,
};

use crate::error::PublishError;
use crate::message::Publish;

/// Publishes [`Publish`] messages on a lapin [`Channel`]; [`traced`](AmqpPublisher::traced)
/// puts it inside a PRODUCER `publish {destination}` span per message, whose context travels in
/// the message headers (it is the inner service of a [`ProducerLayer`], for compositions of your
/// own).
///
/// When the channel is in confirm mode ([`Channel::confirm_select`]) the response future waits
/// for the broker's confirmation, so the producer span covers it and a negative confirmation
/// fails the publish; otherwise it resolves once the message is handed to the connection.
///
/// `P` is the payload type of the [`Publish`] messages it takes (inferred from the first call).
/// Always ready; clone it (it is a channel handle) to publish concurrently.
pub struct AmqpPublisher<P = Vec<u8>> {
    channel: Channel,
    // One request type per publisher, so `ServiceExt::ready` needs no annotation.
    payload: PhantomData<fn(P)>,
}

impl<P> std::fmt::Debug for AmqpPublisher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpPublisher")
            .field("channel", &self.channel)
            .finish()
    }
}

impl<P> Clone for AmqpPublisher<P> {
    fn clone(&self) -> Self {
        Self {
            channel: self.channel.clone(),
            payload: PhantomData,
        }
    }
}

impl<P> AmqpPublisher<P> {
    /// Publishes on `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            payload: PhantomData,
        }
    }

    /// This publisher inside a PRODUCER span per message, with spans and metrics per
    /// `instrumentation`: the same as `ProducerLayer::from(instrumentation).layer(self)`.
    pub fn traced(
        self,
        instrumentation: Instrumentation,
    ) -> ProducerService<Self, DefaultErrorType> {
        ProducerLayer::from(instrumentation).layer(self)
    }

    /// The channel.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// A successful publish: the broker's confirmation, [`Confirmation::Ack`] in confirm mode or
/// [`Confirmation::NotRequested`] otherwise.
#[derive(Debug)]
pub struct Published {
    /// What the broker answered.
    pub confirmation: Confirmation,
}

impl Published {
    /// Whether the broker confirmed the message (the channel is in confirm mode).
    pub fn confirmed(&self) -> bool {
        self.confirmation.is_ack()
    }
}

// Nothing the broker answers is worth a span attribute: the message id is the application's
// and is set before publishing.
impl PublishResponse for Published {}

/// The response future of [`AmqpPublisher`].
pub type PublishFuture = Pin<Box<dyn Future<Output = Result<Published, PublishError>> + Send>>;

impl<P> Service<Publish<P>> for AmqpPublisher<P>
where
    P: AsRef<[u8]> + Send + 'static,
{
    type Response = Published;
    type Error = PublishError;
    type Future = PublishFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Publish<P>) -> Self::Future {
        let channel = self.channel.clone();
        Box::pin(async move {
            let (exchange, routing_key, payload, properties, options) = message.into_parts();
            let confirm = channel
                .basic_publish(exchange, routing_key, options, payload.as_ref(), properties)
                .await?;
            match confirm.await? {
                Confirmation::Ack(Some(returned)) => {
                    Err(PublishError::Returned(Box::new(returned)))
                }
                Confirmation::Nack(returned) => Err(PublishError::Nacked(returned.map(Box::new))),
                confirmation => Ok(Published { confirmation }),
            }
        })
    }
}
