//! The core NATS consume loop.

use std::future::poll_fn;
use std::sync::Arc;

use async_nats::Client;
use futures_util::StreamExt;
use tower::Service;

use crate::error::Error;
use crate::message::Delivery;

/// A core NATS subscription (plain or in a queue group) that feeds a handler service, usually
/// one wrapped in a [`ConsumerLayer`](tracelink_core::ConsumerLayer) (or a
/// [`ResponderLayer`](crate::ResponderLayer) for requests).
///
/// Messages are handled one at a time, in order. Core NATS has no acknowledgement: a failed
/// handler's message is not redelivered; its `process` span records the failure.
#[derive(Debug)]
pub struct Subscription {
    subscriber: async_nats::Subscriber,
    queue_group: Option<Arc<str>>,
}

impl Subscription {
    /// Subscribes to `subject`.
    pub async fn subscribe(client: &Client, subject: impl Into<String>) -> Result<Self, Error> {
        let subscriber = client.subscribe(subject.into()).await?;
        Ok(Self::from_subscriber(subscriber, None))
    }

    /// Subscribes to `subject` in `queue_group`: each message goes to one member of the group.
    /// Process spans carry `messaging.consumer.group.name`.
    pub async fn queue_subscribe(
        client: &Client,
        subject: impl Into<String>,
        queue_group: impl Into<String>,
    ) -> Result<Self, Error> {
        let queue_group: String = queue_group.into();
        let subscriber = client
            .queue_subscribe(subject.into(), queue_group.clone())
            .await?;
        Ok(Self::from_subscriber(subscriber, Some(queue_group.into())))
    }

    /// Wraps a subscriber made elsewhere; give its queue group, if any, so spans record it.
    pub fn from_subscriber(
        subscriber: async_nats::Subscriber,
        queue_group: Option<Arc<str>>,
    ) -> Self {
        Self {
            subscriber,
            queue_group,
        }
    }

    /// The next message; `None` once the subscription ended (unsubscribed, client closed).
    pub async fn next(&mut self) -> Option<Delivery> {
        let message = self.subscriber.next().await?;
        Some(Delivery::new(message, self.queue_group.clone()))
    }

    /// Waits for the next message and hands it to `handler`; `None` once the subscription
    /// ended. The handler's own result is returned.
    pub async fn process_next<S>(
        &mut self,
        handler: &mut S,
    ) -> Option<Result<S::Response, S::Error>>
    where
        S: Service<Delivery>,
    {
        let delivery = self.next().await?;
        if let Err(err) = poll_fn(|cx| handler.poll_ready(cx)).await {
            return Some(Err(err));
        }
        Some(handler.call(delivery).await)
    }

    /// Hands every message to `handler` until the subscription ends. Handler failures are
    /// recorded on their spans and the loop goes on; a failure of the handler's `poll_ready`
    /// ends the loop with that error.
    pub async fn run<S>(mut self, mut handler: S) -> Result<(), S::Error>
    where
        S: Service<Delivery>,
    {
        loop {
            let Some(delivery) = self.next().await else {
                return Ok(());
            };
            poll_fn(|cx| handler.poll_ready(cx)).await?;
            // The error is on the span already; core NATS cannot redeliver.
            let _ = handler.call(delivery).await;
        }
    }

    /// Unsubscribes; [`run`](Subscription::run) and [`next`](Subscription::next) end once the
    /// messages already received are handled.
    pub async fn unsubscribe(&mut self) -> Result<(), Error> {
        Ok(self.subscriber.unsubscribe().await?)
    }

    /// The underlying subscriber.
    pub fn into_inner(self) -> async_nats::Subscriber {
        self.subscriber
    }
}
