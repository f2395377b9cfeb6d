//! What an adapter supplies to the consume driver: its client's receive call and its settle
//! calls.

use std::future::Future;

use crate::consume::policy::Settlement;
use crate::error_type::ErrorType;
use crate::instrumentation::Instrumentation;
use crate::message::{Destination, IncomingMessage};

/// What one [`Source::receive`] brought.
#[derive(Debug)]
pub enum Received<M> {
    /// One message (push consumers: a Kafka, RabbitMQ or NATS delivery).
    One(M),
    /// A batch (pull consumers: an SQS receive, a JetStream fetch); empty when the poll
    /// expired with nothing.
    Batch(Vec<M>),
    /// The source ended (consumer cancelled, subscription closed): the consumer stops as on
    /// shutdown and returns `Ok`.
    Closed,
}

/// A broker client's receive side, as the core's consume driver uses it.
///
/// The driver owns the source and hands it to [`receive`](Source::receive) by value, getting it
/// back with the result, so a receive in progress can run while handlers and settlements of
/// earlier messages go on. The driver drops a receive in progress when it stops (shutdown,
/// failure): a receive must then either not have taken messages yet or leave them to the
/// broker's redelivery (unacknowledged, invisible until their visibility timeout, ...).
pub trait Source: Sized + Send + 'static {
    /// The delivery type the handler gets.
    type Message: IncomingMessage + Send + 'static;
    /// The client's receive error. Errors the client recovers from by itself are not returned
    /// (the source retries); a returned error stops the consumer.
    type Error: std::error::Error + ErrorType + Send + Sync + 'static;
    /// Settles messages of this source.
    type Settler: Settler<Self::Message>;

    /// The settler for this source's messages (called once, before the first receive).
    fn settler(&self) -> Self::Settler;

    /// Called once, by [`Consumer::new`](crate::Consumer::new), with the consumer's
    /// instrumentation: a source that needs the propagator to receive (SQS asks for the
    /// propagator's fields as message attributes and re-encodes an `AWSTraceHeader` context in
    /// the propagator's format) keeps what it needs. The default does nothing.
    fn bind(&mut self, instrumentation: &Instrumentation) {
        let _ = instrumentation;
    }

    /// Receives at most `max` messages (at least 1). Waits for at least one message, or, for
    /// pull consumers, until the poll expired (then an empty [`Received::Batch`]).
    fn receive(
        self,
        max: usize,
    ) -> impl Future<Output = (Self, Result<Received<Self::Message>, Self::Error>)> + Send;

    /// The destination of `receive` spans (an SQS queue, a JetStream stream); `None` (the
    /// default) takes the first received message's.
    fn destination(&self) -> Option<Destination<'_>> {
        None
    }

    /// Messages that must be handled one after the other share an ordering key (a Kafka
    /// partition, an SQS FIFO message group); `None` (the default) lets a message run beside
    /// any other, up to the consumer's concurrency.
    fn ordering_key(&self, message: &Self::Message) -> Option<u64> {
        let _ = message;
        None
    }

    /// How many messages the consumer receives ahead of its handlers unless the builder says
    /// otherwise ([`Consumer::with_prefetch`](crate::Consumer::with_prefetch)): 1 (the default)
    /// for push consumers, whose broker already buffers; a fetch's worth for pull consumers, so
    /// one receive call brings several messages.
    fn default_prefetch(&self) -> usize {
        1
    }

    /// Whether receive spans are recorded unless the builder says otherwise: `true` for pull
    /// consumers, whose receive is an operation of its own; `false` (the default) for push
    /// consumers.
    fn receive_spans_by_default(&self) -> bool {
        false
    }
}

/// A broker client's settle calls: what the driver calls after a handler's outcome.
///
/// Broker rules about settling (Kafka's in-order offset commits, SQS's batch deletes) live
/// here. Settle futures own what they need (`'static`): they run while the source receives.
pub trait Settler<M>: Send + Sync + 'static {
    /// What is kept of a message to settle it once the handler owns the message: an acker, a
    /// receipt handle, a partition and offset.
    type Receipt: Send + 'static;
    /// The client's settle error.
    type Error: std::error::Error + ErrorType + Send + Sync + 'static;

    /// Takes the receipt of `message` before it goes to the handler.
    fn receipt(&self, message: &M) -> Self::Receipt;

    /// The broker's verb for `settlement` (`ack`, `nack`, `term`, `delete`, `commit`, ...):
    /// the settle span's `messaging.operation.name`; `None` when the settlement makes no call
    /// (an SQS message left to its visibility timeout): no span then.
    fn operation(&self, settlement: Settlement) -> Option<&'static str>;

    /// Settles one message.
    fn settle(
        &self,
        receipt: Self::Receipt,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static + use<Self, M>;

    /// Settles several messages at once (a batch consumer's, or what a consumer gives back
    /// when it stops), one result per item in order. The default settles them one by one,
    /// concurrently; override it where the broker has a batch call.
    fn settle_all(
        &self,
        items: Vec<(Self::Receipt, Settlement)>,
    ) -> impl Future<Output = Vec<Result<(), Self::Error>>> + Send + 'static + use<Self, M> {
        let calls: Vec<_> = items
            .into_iter()
            .map(|(receipt, settlement)| self.settle(receipt, settlement))
            .collect();
        futures_util::future::join_all(calls)
    }

    /// Called once when the consumer stops, after every message in flight was settled (Kafka
    /// commits the offsets it stored). The default does nothing.
    fn close(
        &self,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static + use<Self, M> {
        std::future::ready(Ok(()))
    }
}
