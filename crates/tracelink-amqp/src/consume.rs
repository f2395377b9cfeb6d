//! The consume side: a lapin [`Consumer`] as the core's [`Source`], and lapin's acker as its
//! [`Settler`]. The core's [`Consumer`](tracelink_core::Consumer) drives them.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Acker, Consumer};
use tracelink_core::{DefaultErrorType, Received, Settlement, Settler, Source};

use crate::error::AmqpError;
use crate::message::{AmqpDelivery, Route};

/// A traced RabbitMQ consumer: the core's [`Consumer`](tracelink_core::Consumer) over a lapin
/// [`Consumer`] (from [`Channel::basic_consume`](lapin::Channel::basic_consume), without
/// `no_ack`).
///
/// ```no_run
/// # use std::convert::Infallible;
/// # use tracelink_amqp::{AmqpConsumer, AmqpDelivery};
/// # use tracelink_core::{Instrumentation, OnFailure};
/// # async fn run(
/// #     consumer: lapin::Consumer,
/// #     instrumentation: Instrumentation,
/// #     shutdown: impl std::future::Future<Output = ()>,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// AmqpConsumer::new(consumer, instrumentation)
///     .with_concurrency(8)
///     .on_failure(OnFailure::Reject)
///     .run(
///         tower::service_fn(|delivery: AmqpDelivery| async move {
///             println!("{} bytes", delivery.data().len());
///             Ok::<_, Infallible>(())
///         }),
///         shutdown, // stop taking deliveries, finish and settle those in flight, return Ok
///     )
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// Each delivery becomes an [`AmqpDelivery`] handed to the handler inside a CONSUMER
/// `process {exchange}:{routing key}:{queue}` span linked to the producer's span, and is settled
/// only after the handler's outcome:
///
/// | outcome / policy | lapin call | settle span |
/// |---|---|---|
/// | handler `Ok` | `basic.ack` | `ack` |
/// | [`OnFailure::Redeliver`](tracelink_core::OnFailure::Redeliver) (default), [`Stop`](tracelink_core::OnFailure::Stop) | `basic.nack` with `requeue`: back to the queue, delivered again at once (flagged `redelivered`) | `nack` |
/// | [`OnFailure::RedeliverAfter(d)`](tracelink_core::OnFailure::RedeliverAfter) | the same: RabbitMQ cannot delay a requeue, so `d` is ignored (a delay needs a dead-letter exchange with a message TTL) | `nack` |
/// | [`OnFailure::Reject`](tracelink_core::OnFailure::Reject) | `basic.reject` without `requeue`: to the queue's dead-letter exchange if it has one, else dropped | `reject` |
/// | given back unhandled when the consumer stops ([`Settlement::Release`]) | `basic.nack` with `requeue` | none |
///
/// A handler that settles the delivery itself (through [`AmqpDelivery::acker`]) is not settled
/// again, and the consumer goes on.
///
/// The consumer takes one delivery at a time from lapin (its default prefetch is 1): how many
/// deliveries RabbitMQ sends ahead is the channel's prefetch
/// ([`Channel::basic_qos`](lapin::Channel::basic_qos)), the application's. When the consumer
/// stops, deliveries RabbitMQ had sent but the consumer did not take stay unacknowledged until
/// their channel closes, and then go back to the queue: close the channel when `run` returned.
pub type AmqpConsumer<C = DefaultErrorType> = tracelink_core::Consumer<AmqpSource, C>;

/// The receive side of an [`AmqpConsumer`]: a lapin [`Consumer`] (converts from one).
pub struct AmqpSource {
    consumer: Consumer,
    queue: Arc<str>,
    // The route of the last delivery: deliveries with the same exchange and routing key share it.
    route: Option<Arc<Route>>,
}

impl std::fmt::Debug for AmqpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSource")
            .field("queue", &self.queue)
            .field("consumer_tag", &self.consumer.tag())
            .finish_non_exhaustive()
    }
}

impl From<Consumer> for AmqpSource {
    fn from(consumer: Consumer) -> Self {
        Self::new(consumer)
    }
}

impl AmqpSource {
    /// Receives from `consumer`.
    pub fn new(consumer: Consumer) -> Self {
        Self {
            queue: Arc::from(consumer.queue().as_str()),
            consumer,
            route: None,
        }
    }

    /// The lapin consumer.
    pub fn consumer(&self) -> &Consumer {
        &self.consumer
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    fn wrap(&mut self, delivery: lapin::message::Delivery) -> AmqpDelivery {
        let (exchange, routing_key) = (delivery.exchange.as_str(), delivery.routing_key.as_str());
        let route = match &self.route {
            Some(route) if route.fits(exchange, routing_key) => route.clone(),
            _ => {
                let route = Arc::new(Route::new(self.queue.clone(), exchange, routing_key));
                self.route = Some(route.clone());
                route
            }
        };
        AmqpDelivery::with_route(delivery, route)
    }
}

impl Source for AmqpSource {
    type Message = AmqpDelivery;
    type Error = AmqpError;
    type Settler = AmqpSettler;

    fn settler(&self) -> AmqpSettler {
        AmqpSettler { _private: () }
    }

    async fn receive(mut self, _max: usize) -> (Self, Result<Received<AmqpDelivery>, AmqpError>) {
        // `next` is cancel-safe: a receive dropped by the consumer loses no delivery.
        let result = match self.consumer.next().await {
            Some(Ok(delivery)) => Ok(Received::One(self.wrap(delivery))),
            Some(Err(error)) => Err(AmqpError::from(error)),
            None => Ok(Received::Closed),
        };
        (self, result)
    }
}

/// Settles [`AmqpDelivery`]s through lapin's [`Acker`]; see [`AmqpConsumer`] for what each
/// settlement sends.
#[derive(Debug)]
pub struct AmqpSettler {
    _private: (),
}

/// The AMQP method of a settlement.
#[derive(Clone, Copy)]
enum Method {
    Ack,
    Nack,
    Reject,
}

impl Method {
    fn of(settlement: Settlement) -> Self {
        match settlement {
            Settlement::Ack => Method::Ack,
            Settlement::Reject => Method::Reject,
            // Redeliver (RabbitMQ cannot delay it), Release, and anything newer: back to the
            // queue, which never loses a message.
            _ => Method::Nack,
        }
    }

    fn operation(self) -> &'static str {
        match self {
            Method::Ack => "ack",
            Method::Nack => "nack",
            Method::Reject => "reject",
        }
    }
}

impl Settler<AmqpDelivery> for AmqpSettler {
    type Receipt = Acker;
    type Error = AmqpError;

    fn receipt(&self, message: &AmqpDelivery) -> Acker {
        message.acker().clone()
    }

    fn operation(&self, settlement: Settlement) -> Option<&'static str> {
        Some(Method::of(settlement).operation())
    }

    fn settle(
        &self,
        acker: Acker,
        settlement: Settlement,
    ) -> impl Future<Output = Result<(), AmqpError>> + Send + 'static + use<> {
        let method = Method::of(settlement);
        async move {
            let sent = match method {
                Method::Ack => acker.ack(BasicAckOptions::default()).await?,
                Method::Nack => {
                    acker
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await?
                }
                Method::Reject => acker.reject(BasicRejectOptions { requeue: false }).await?,
            };
            // Not sent: either the handler settled the delivery itself (fine), or the channel is
            // gone (the message goes back to the queue; say so rather than report success).
            if !sent && acker.poisoned() {
                return Err(AmqpError::channel_closed(method.operation()));
            }
            Ok(())
        }
    }
}
