//! The consume loop: drives a lapin [`Consumer`] through a handler wrapped in the core's
//! [`ConsumerLayer`], and settles each message after its handler finished.

use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, Consumer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::{BoxError, Layer, Service};
use tracelink_core::{
    ClassifyError, ConsumerLayer, DefaultErrorType, Destination, Instrumentation,
};

use crate::error::{lapin_error_type, ConsumeError};
use crate::message::AmqpDelivery;

/// Consumes a queue: each delivery becomes an [`AmqpDelivery`] handed to the handler inside a
/// CONSUMER `process {exchange}:{routing key}:{queue}` span linked to the producer's span, and is
/// settled only after the handler finished:
///
/// * handler `Ok`: `basic.ack`;
/// * handler `Err`: `basic.nack` with `requeue` (the default; turn it off with
///   [`with_requeue`](Self::with_requeue) so a dead-letter exchange receives failed messages).
///
/// A handler that settles the delivery itself (through [`AmqpDelivery::delivery`]) is not
/// settled again.
///
/// At most [`with_concurrency`](Self::with_concurrency) handlers run at once (default 1, which
/// keeps the queue's order). The channel's prefetch (`basic_qos`) is the application's: the loop
/// never takes more deliveries than the broker sends.
///
/// # Stopping
///
/// [`run`](Self::run) returns when the consumer is cancelled (`Ok`), or with a [`ConsumeError`]
/// when its channel or connection closes, a settlement fails, or the handler fails to become
/// ready. [`run_until`](Self::run_until) also stops on a signal. Either way the loop stops taking
/// deliveries, lets the handlers in flight finish and settles them when it still can, then
/// returns. Messages delivered but not acknowledged go back to the queue when their channel
/// closes: RabbitMQ's guarantee, which the loop never breaks by acknowledging early.
pub struct ConsumeLoop<C = DefaultErrorType> {
    consumer: Consumer,
    instrumentation: Instrumentation,
    layer: ConsumerLayer<C>,
    concurrency: usize,
    requeue: bool,
    settle_spans: bool,
}

impl<C> std::fmt::Debug for ConsumeLoop<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeLoop")
            .field("queue", &self.consumer.queue())
            .field("concurrency", &self.concurrency)
            .field("requeue", &self.requeue)
            .field("settle_spans", &self.settle_spans)
            .finish_non_exhaustive()
    }
}

impl ConsumeLoop {
    /// A loop over `consumer` (from [`Channel::basic_consume`](lapin::Channel::basic_consume)
    /// without `no_ack`), with spans and metrics per `instrumentation`.
    pub fn new(consumer: Consumer, instrumentation: Instrumentation) -> Self {
        Self {
            consumer,
            layer: ConsumerLayer::from(instrumentation.clone()),
            instrumentation,
            concurrency: 1,
            requeue: true,
            settle_spans: false,
        }
    }
}

impl<C> ConsumeLoop<C> {
    /// Runs up to `concurrency` handlers at once (at least 1).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Whether a failed message goes back to the queue (`true`, the default) or is rejected
    /// for good, to the queue's dead-letter exchange when it has one (`false`).
    pub fn with_requeue(mut self, requeue: bool) -> Self {
        self.requeue = requeue;
        self
    }

    /// Classifies handler errors as `error.type` with `classify` (see
    /// [`ConsumerLayer::with_error_type`]).
    pub fn with_error_type<C2>(self, classify: C2) -> ConsumeLoop<C2> {
        ConsumeLoop {
            consumer: self.consumer,
            layer: self.layer.with_error_type(classify),
            instrumentation: self.instrumentation,
            concurrency: self.concurrency,
            requeue: self.requeue,
            settle_spans: self.settle_spans,
        }
    }

    /// Records a CLIENT `ack {destination}` or `nack {destination}` span per settlement, child
    /// of the message's process span ([`Instrumentation::settle_span`]).
    pub fn with_settle_spans(mut self) -> Self {
        self.settle_spans = true;
        self
    }

    /// Runs until the consumer is cancelled or fails; see [`ConsumeLoop`].
    pub async fn run<S>(self, handler: S) -> Result<(), ConsumeError>
    where
        S: Service<AmqpDelivery>,
        S::Error: Into<BoxError>,
        C: ClassifyError<S::Error> + Clone,
    {
        self.run_until(handler, std::future::pending::<()>()).await
    }

    /// Like [`run`](Self::run), and also stops taking deliveries once `signal` completes; then
    /// returns `Ok` after the handlers in flight finished and their messages were settled.
    ///
    /// The consumer is cancelled when the loop returns. Deliveries the broker had already sent
    /// (up to the prefetch count) but the loop did not take stay unacknowledged until their
    /// channel closes, and then go back to the queue: close the channel when you are done.
    pub async fn run_until<S, F>(self, handler: S, signal: F) -> Result<(), ConsumeError>
    where
        S: Service<AmqpDelivery>,
        S::Error: Into<BoxError>,
        C: ClassifyError<S::Error> + Clone,
        F: Future,
    {
        let ConsumeLoop {
            mut consumer,
            instrumentation,
            layer,
            concurrency,
            requeue,
            settle_spans,
        } = self;
        let queue = consumer.queue();
        let process_cx = Arc::new(Mutex::new(None));
        let mut service = layer.layer(CaptureContext {
            inner: handler,
            slot: process_cx.clone(),
        });
        let settle = settle_spans.then(|| instrumentation.clone());
        let mut signal = std::pin::pin!(signal);
        let mut in_flight = FuturesUnordered::new();
        let mut stopping = false;
        let mut outcome = Ok(());
        loop {
            let event = poll_fn(|cx| {
                if let Poll::Ready(Some(settled)) = in_flight.poll_next_unpin(cx) {
                    return Poll::Ready(Event::Settled(settled));
                }
                if !stopping && signal.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
                if stopping {
                    return match in_flight.is_empty() {
                        true => Poll::Ready(Event::Done),
                        false => Poll::Pending,
                    };
                }
                if in_flight.len() >= concurrency {
                    return Poll::Pending;
                }
                match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::NotReady(e.into())),
                    Poll::Pending => return Poll::Pending,
                }
                consumer.poll_next_unpin(cx).map(Event::Delivery)
            })
            .await;
            match event {
                Event::Delivery(Some(Ok(delivery))) => {
                    let acker = delivery.acker.clone();
                    let message = AmqpDelivery::new(delivery, queue.clone());
                    let settle = settle
                        .as_ref()
                        .map(|s| (s.clone(), SettleTarget::of(&message)));
                    let handled = service.call(message);
                    let parent = lock(&process_cx).take();
                    in_flight.push(settle_after(handled, acker, requeue, settle, parent));
                }
                Event::Delivery(Some(Err(error))) => {
                    stopping = true;
                    if outcome.is_ok() {
                        outcome = Err(ConsumeError::Consumer(error));
                    }
                }
                Event::Delivery(None) | Event::Stop => stopping = true,
                Event::Settled(Ok(())) => {}
                Event::Settled(Err(error)) => {
                    stopping = true;
                    if outcome.is_ok() {
                        outcome = Err(ConsumeError::Settle(error));
                    }
                }
                Event::NotReady(error) => {
                    stopping = true;
                    if outcome.is_ok() {
                        outcome = Err(ConsumeError::NotReady(error));
                    }
                }
                Event::Done => return outcome,
            }
        }
    }
}

// Short-lived and moved once per delivery: boxing the delivery would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Event {
    Delivery(Option<lapin::Result<lapin::message::Delivery>>),
    Settled(Result<(), lapin::Error>),
    NotReady(BoxError),
    Stop,
    Done,
}

fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Awaits the (traced) handler, then acks or nacks.
async fn settle_after<F, R, E>(
    handled: F,
    acker: Acker,
    requeue: bool,
    settle: Option<(Instrumentation, SettleTarget)>,
    parent: Option<Context>,
) -> Result<(), lapin::Error>
where
    F: Future<Output = Result<R, E>>,
{
    let succeeded = handled.await.is_ok();
    let operation = if succeeded { "ack" } else { "nack" };
    let span = settle.map(|(instrumentation, target)| {
        instrumentation.settle_span(
            operation,
            Destination::new(&target.destination),
            &parent.unwrap_or_default(),
            vec![KeyValue::new(
                attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                target.delivery_tag,
            )],
        )
    });
    let result = if succeeded {
        acker.ack(BasicAckOptions::default()).await
    } else {
        acker
            .nack(BasicNackOptions {
                requeue,
                ..BasicNackOptions::default()
            })
            .await
    };
    if let Some(span) = span {
        match &result {
            Ok(_) => span.end(),
            Err(error) => span.fail(lapin_error_type(error)),
        }
    }
    result.map(|_| ())
}

/// Records the process span's context when the consumer layer calls the handler, so the loop
/// can parent settle spans on it.
struct CaptureContext<S> {
    inner: S,
    slot: Arc<Mutex<Option<Context>>>,
}

impl<S: Service<AmqpDelivery>> Service<AmqpDelivery> for CaptureContext<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: AmqpDelivery) -> Self::Future {
        *lock(&self.slot) = Some(Context::current());
        self.inner.call(message)
    }
}

/// What a settle span says about its message.
struct SettleTarget {
    destination: String,
    delivery_tag: i64,
}

impl SettleTarget {
    fn of(message: &AmqpDelivery) -> Self {
        Self {
            destination: tracelink_core::IncomingMessage::destination(message)
                .name
                .to_owned(),
            delivery_tag: i64::try_from(message.delivery().delivery_tag).unwrap_or(i64::MAX),
        }
    }
}
