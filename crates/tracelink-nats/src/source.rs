//! The core NATS consumer: a subscription as the core's [`Source`].

use std::sync::Arc;

use async_nats::Client;
use futures_util::StreamExt;
use tracelink_core::{Consumer, DefaultErrorType, Received, Settlement, Settler, Source};

use crate::error::Error;
use crate::message::NatsDelivery;

/// A traced core NATS consumer: the core's [`Consumer`] over a [`NatsSource`].
///
/// ```no_run
/// # use tower::service_fn;
/// # use tracelink_core::Instrumentation;
/// # use tracelink_nats::{NatsConsumer, NatsDelivery};
/// # async fn f(
/// #     client: async_nats::Client,
/// #     instrumentation: Instrumentation,
/// #     shutdown: impl std::future::Future,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// let subscriber = client.subscribe("orders").await?;
/// let handler = service_fn(|delivery: NatsDelivery| async move {
///     println!("{} bytes", delivery.message.payload.len());
///     Ok::<_, std::convert::Infallible>(())
/// });
/// NatsConsumer::new(subscriber, instrumentation)
///     .run(handler, shutdown) // Ok when `shutdown` completes
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Core NATS has no acknowledgement: a message is handled **at most once**. Whatever the
/// [`OnFailure`](tracelink_core::OnFailure) policy, a failed handler's message is not delivered
/// again (its `process` span records the failure; [`OnFailure::Stop`](tracelink_core::OnFailure::Stop)
/// still stops the consumer), there is no settle span, and the messages received but not handled
/// when the consumer stops are lost.
pub type NatsConsumer<C = DefaultErrorType> = Consumer<NatsSource, C>;

/// A core NATS subscription (plain or in a queue group) as the source of a [`NatsConsumer`]:
/// one [`NatsDelivery`] per receive; the end of the subscription (unsubscribed, client closed)
/// ends the consumer.
#[derive(Debug)]
pub struct NatsSource {
    subscriber: async_nats::Subscriber,
    queue_group: Option<Arc<str>>,
}

impl NatsSource {
    /// A source over a subscriber made elsewhere (give its queue group, if any, with
    /// [`with_queue_group`](NatsSource::with_queue_group)).
    pub fn new(subscriber: async_nats::Subscriber) -> Self {
        Self {
            subscriber,
            queue_group: None,
        }
    }

    /// The queue group `subscriber` was made in: process spans carry
    /// `messaging.consumer.group.name`.
    pub fn with_queue_group(mut self, queue_group: impl Into<Arc<str>>) -> Self {
        self.queue_group = Some(queue_group.into());
        self
    }

    /// Subscribes to `subject`.
    pub async fn subscribe(client: &Client, subject: impl Into<String>) -> Result<Self, Error> {
        let subscriber = client.subscribe(subject.into()).await?;
        Ok(Self::new(subscriber))
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
        Ok(Self::new(subscriber).with_queue_group(queue_group))
    }

    /// The queue group the subscription is in.
    pub fn queue_group(&self) -> Option<&str> {
        self.queue_group.as_deref()
    }

    /// The underlying subscriber.
    pub fn subscriber_mut(&mut self) -> &mut async_nats::Subscriber {
        &mut self.subscriber
    }

    /// Unwraps the subscriber.
    pub fn into_inner(self) -> async_nats::Subscriber {
        self.subscriber
    }
}

impl From<async_nats::Subscriber> for NatsSource {
    fn from(subscriber: async_nats::Subscriber) -> Self {
        Self::new(subscriber)
    }
}

impl Source for NatsSource {
    type Message = NatsDelivery;
    type Error = Error;
    type Settler = NatsSettler;

    fn settler(&self) -> NatsSettler {
        NatsSettler
    }

    async fn receive(mut self, _max: usize) -> (Self, Result<Received<NatsDelivery>, Error>) {
        // `Subscriber::next` reads a channel: dropping it unfinished loses nothing.
        let received = match self.subscriber.next().await {
            Some(message) => Received::One(NatsDelivery::new(message, self.queue_group.clone())),
            None => Received::Closed,
        };
        (self, Ok(received))
    }
}

/// Core NATS has no acknowledgement: settling makes no call (no settle span), whatever the
/// settlement.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsSettler;

impl Settler<NatsDelivery> for NatsSettler {
    type Receipt = ();
    type Error = Error;

    fn receipt(&self, _message: &NatsDelivery) {}

    fn operation(&self, _settlement: Settlement) -> Option<&'static str> {
        None
    }

    fn settle(
        &self,
        _receipt: (),
        _settlement: Settlement,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static + use<> {
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_nats_settles_without_a_call() {
        for settlement in [
            Settlement::Ack,
            Settlement::Redeliver { delay: None },
            Settlement::Reject,
            Settlement::Release,
        ] {
            assert_eq!(NatsSettler.operation(settlement), None);
        }
    }
}
