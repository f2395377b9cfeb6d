//! The consumer every adapter's consumer type is: builder and per-message consume loop.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt as _;
use opentelemetry::Context;
use rustc_hash::FxHashMap;
use tower::{Layer, Service};

use crate::consume::error::ConsumeError;
use crate::consume::policy::{OnFailure, Settlement};
use crate::consume::settle::{release, settle, settle_each, SettleFailure, SettleTarget};
use crate::consume::source::{Received, Settler, Source};
use crate::consumer::ConsumerService;
use crate::error_type::{ClassifyError, DefaultErrorType, ErrorType};
use crate::instrumentation::Instrumentation;
use crate::message::IncomingMessage;

/// How a batch consumer ([`Consumer::run_batches`]) fills a batch: up to `max_messages`, or what
/// arrived within `max_wait` of its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most messages in one batch (at least 1).
    pub max_messages: usize,
    /// Longest wait for a batch to fill, from its first message.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// A traced consumer over a broker client's [`Source`]: every adapter's consumer type
/// (`KafkaConsumer`, `AmqpConsumer`, `NatsConsumer`, `JetStreamConsumer`, `SqsConsumer`) is
/// this type, so they share their builder and their `run`.
///
/// [`run`](Consumer::run) receives messages, hands each to the handler inside a CONSUMER
/// `process` span (the core's [`ConsumerLayer`](crate::ConsumerLayer), applied here), and
/// settles each message only after its handler's outcome: success is acknowledged, a failure is
/// settled per the [`OnFailure`] policy. [`run_batches`](Consumer::run_batches) does the same
/// for batches, one `process` span with a link per message.
///
/// | builder | default | what it does |
/// |---|---|---|
/// | [`with_concurrency`](Consumer::with_concurrency) | 1 | handlers running at once (messages with the same ordering key, such as a Kafka partition, still run one after the other) |
/// | [`with_prefetch`](Consumer::with_prefetch) | the source's: 1 for push consumers, a fetch for pull consumers | messages received ahead of the handlers |
/// | [`on_failure`](Consumer::on_failure) | [`OnFailure::Redeliver`] | what a failed handler's message becomes |
/// | [`with_settle_spans`](Consumer::with_settle_spans) | off | a CLIENT settle span per message (`ack`, `nack`, `delete`, `commit`, ...), child of its `process` span |
/// | [`with_receive_spans`](Consumer::with_receive_spans) | on for pull consumers (SQS, JetStream), off for push consumers | a CLIENT `receive` span per receive that brought messages, with a link per message |
/// | [`with_batch`](Consumer::with_batch) | 100 messages, 100 ms | how [`run_batches`](Consumer::run_batches) fills a batch |
/// | [`with_error_type`](Consumer::with_error_type) | [`DefaultErrorType`] | how handler errors become `error.type` |
///
/// # Stopping
///
/// `run` returns `Ok` when `shutdown` completes or the source ends (a cancelled consumer, a
/// closed subscription), and an error when receiving or settling fails, when the handler's
/// `poll_ready` fails, or when a handler fails under [`OnFailure::Stop`]. Either way it first
/// stops receiving, gives back the messages received but not yet handled, lets the handlers in
/// flight finish and settles them. Nothing is acknowledged before its handler succeeded.
pub struct Consumer<Src, C = DefaultErrorType> {
    source: Src,
    instrumentation: Instrumentation,
    classify: C,
    concurrency: usize,
    prefetch: Option<usize>,
    on_failure: OnFailure,
    settle_spans: bool,
    receive_spans: Option<bool>,
    batch: BatchConfig,
}

impl<Src: std::fmt::Debug, C> std::fmt::Debug for Consumer<Src, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("source", &self.source)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("on_failure", &self.on_failure)
            .field("settle_spans", &self.settle_spans)
            .field("receive_spans", &self.receive_spans)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<Src: Source> Consumer<Src> {
    /// A consumer of `source` (an adapter's source, or what converts into one: a lapin
    /// consumer, a NATS subscriber, ...), with spans and metrics per `instrumentation`.
    pub fn new(source: impl Into<Src>, instrumentation: Instrumentation) -> Self {
        let mut source = source.into();
        source.bind(&instrumentation);
        Self {
            source,
            instrumentation,
            classify: DefaultErrorType,
            concurrency: 1,
            prefetch: None,
            on_failure: OnFailure::default(),
            settle_spans: false,
            receive_spans: None,
            batch: BatchConfig::default(),
        }
    }
}

impl<Src: Source, C> Consumer<Src, C> {
    /// Runs up to `concurrency` handlers at once (at least 1; default 1, which keeps the
    /// source's order).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Receives up to `prefetch` messages ahead of the handlers: messages received and not yet
    /// settled never exceed it (nor the concurrency, whichever is larger). Default: the source's
    /// (1 for push consumers, whose broker buffers; a fetch for pull consumers, 10 on SQS).
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// What happens to a message whose handler failed (default [`OnFailure::Redeliver`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Records a CLIENT settle span per settled message: `{operation} {destination}` with the
    /// broker's verb, `messaging.operation.type` = `settle`, child of the message's `process`
    /// span, `error.type` when settling failed.
    pub fn with_settle_spans(mut self) -> Self {
        self.settle_spans = true;
        self
    }

    /// Records (or not) a CLIENT `receive` span per receive that brought messages, with one
    /// link per message that carried a context. Default: on for pull consumers, off for push
    /// consumers.
    pub fn with_receive_spans(mut self, on: bool) -> Self {
        self.receive_spans = Some(on);
        self
    }

    /// How [`run_batches`](Consumer::run_batches) fills a batch.
    pub fn with_batch(mut self, config: BatchConfig) -> Self {
        self.batch = BatchConfig {
            max_messages: config.max_messages.max(1),
            max_wait: config.max_wait,
        };
        self
    }

    /// Classifies handler errors as `error.type` with `classify` (see
    /// [`ConsumerLayer::with_error_type`](crate::ConsumerLayer::with_error_type)).
    pub fn with_error_type<C2>(self, classify: C2) -> Consumer<Src, C2> {
        Consumer {
            source: self.source,
            instrumentation: self.instrumentation,
            classify,
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            on_failure: self.on_failure,
            settle_spans: self.settle_spans,
            receive_spans: self.receive_spans,
            batch: self.batch,
        }
    }

    /// The source (to reach the client: subscribe a Kafka consumer, read a queue URL).
    pub fn source(&self) -> &Src {
        &self.source
    }

    /// The source, mutably.
    pub fn source_mut(&mut self) -> &mut Src {
        &mut self.source
    }

    /// The instrumentation spans and metrics come from.
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.instrumentation
    }

    /// Consumes until `shutdown` completes, the source ends, or a failure stops it (see
    /// [`Consumer`]): each message goes to `handler` inside its own `process` span and is settled
    /// after the handler's outcome.
    pub async fn run<S, F>(self, handler: S, shutdown: F) -> Result<(), ConsumeError<S::Error>>
    where
        S: Service<Src::Message>,
        C: ClassifyError<S::Error> + Clone,
        F: Future,
    {
        let Consumer {
            source,
            instrumentation,
            classify,
            concurrency,
            prefetch,
            on_failure,
            settle_spans,
            receive_spans,
            batch: _,
        } = self;
        let receive_spans = receive_spans.unwrap_or_else(|| source.receive_spans_by_default());
        let prefetch = prefetch
            .unwrap_or_else(|| source.default_prefetch())
            .max(concurrency);
        let settler = source.settler();
        let failure_event = failure_event(on_failure);
        let mut service = ConsumerService {
            inner: handler,
            instrumentation: instrumentation.clone(),
            classify,
        };
        let mut shutdown = pin!(shutdown);
        let mut receiving = pin!(None);
        let mut idle = Some(source);
        // Received, waiting for the handler to become ready.
        let mut ready: VecDeque<(Src::Message, Option<u64>)> = VecDeque::new();
        // Ordering keys with a message in flight, each with the messages received behind it.
        let mut running: FxHashMap<u64, VecDeque<Src::Message>> = FxHashMap::default();
        // One handler and one settlement run in a slot of their own, the others in a
        // `FuturesUnordered`: with one handler at a time (the default) and settlements that
        // finish at once, a message costs no allocation for either.
        let mut handler_slot = pin!(None);
        let mut in_flight = FuturesUnordered::new();
        let mut settle_slot = pin!(None);
        let mut settling = FuturesUnordered::new();
        let mut settling_together = FuturesUnordered::new();
        let mut releasing = FuturesUnordered::new();
        // Messages received and not yet settled or released: what the prefetch bounds.
        let mut outstanding = 0usize;
        // Whether the source receives batches (it answered with one).
        let mut pulls = false;
        let mut stopping = false;
        let mut outcome: Result<(), ConsumeError<S::Error>> = Ok(());

        poll_fn(|cx| loop {
            let mut progress = false;

            // A shutdown stops handing out messages; it is checked again below, once the
            // handlers ran.
            if !stopping && shutdown.as_mut().poll(cx).is_ready() {
                stopping = true;
            }

            // Hand received messages to the handler, up to the concurrency.
            while !stopping
                && !ready.is_empty()
                && in_flight.len() + usize::from(handler_slot.is_some()) < concurrency
            {
                match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => {
                        stopping = true;
                        keep_first(&mut outcome, ConsumeError::NotReady(error));
                        break;
                    }
                    Poll::Pending => break,
                }
                let Some((message, key)) = ready.pop_front() else {
                    break;
                };
                let receipt = settler.receipt(&message);
                let target = settle_spans.then(|| SettleTarget::of(&message));
                let (process_cx, call) = service.call_in_span(message);
                let call = call.with_failure_event(failure_event);
                let process_cx = settle_spans.then_some(process_cx);
                let call = tagged(call, receipt, key, target, process_cx);
                if handler_slot.is_none() {
                    handler_slot.set(Some(call));
                } else {
                    in_flight.push(call);
                }
                progress = true;
            }

            // Handlers that finished: settle their messages. Settlements due in the same turn
            // go to the settler together (`settle_all`: SQS deletes them in one call); one
            // alone takes `settle`.
            let mut first_due = None;
            let mut more_due = Vec::new();
            loop {
                let mut handled = None;
                if let Some(call) = handler_slot.as_mut().as_pin_mut() {
                    if let Poll::Ready(done) = call.poll(cx) {
                        handler_slot.set(None);
                        handled = Some(done);
                    }
                }
                if handled.is_none() {
                    if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                        handled = Some(done);
                    }
                }
                let Some(Handled {
                    result,
                    receipt,
                    key,
                    target,
                    process_cx,
                }) = handled
                else {
                    break;
                };
                progress = true;
                let settlement = match result {
                    Ok(()) => Settlement::Ack,
                    Err(error) => {
                        if on_failure == OnFailure::Stop {
                            stopping = true;
                            keep_first(&mut outcome, ConsumeError::Handler(error));
                        }
                        on_failure.settlement()
                    }
                };
                let due = (receipt, settlement, target, process_cx);
                match first_due {
                    None => first_due = Some(due),
                    Some(_) => more_due.push(due),
                }
                outstanding -= 1;
                if let Some(key) = key {
                    if matches!(settlement, Settlement::Redeliver { .. }) {
                        // The broker redelivers an ordered message before what came after
                        // it (a Kafka partition rewinds, an SQS FIFO group holds): give
                        // back, unhandled, what was received behind it.
                        if let Some(behind) = running.remove(&key) {
                            if !behind.is_empty() {
                                outstanding -= behind.len();
                                releasing.push(release(&settler, behind.into()));
                            }
                        }
                    } else {
                        match running.get_mut(&key).and_then(VecDeque::pop_front) {
                            Some(next) => ready.push_back((next, Some(key))),
                            None => {
                                running.remove(&key);
                            }
                        }
                    }
                }
            }
            if let Some(first) = first_due {
                if more_due.is_empty() {
                    let (receipt, settlement, target, process_cx) = first;
                    let call = settle(
                        &settler,
                        &instrumentation,
                        receipt,
                        settlement,
                        target,
                        process_cx,
                    );
                    if settle_slot.is_none() {
                        settle_slot.set(Some(call));
                    } else {
                        settling.push(call);
                    }
                } else {
                    more_due.insert(0, first);
                    settling_together.push(settle_each(&settler, &instrumentation, more_due));
                }
            }

            // Settlements that finished.
            {
                let mut settled = |result: Result<(), SettleFailure>| {
                    progress = true;
                    if let Err(failure) = result {
                        stopping = true;
                        keep_first(&mut outcome, failure.into_consume_error());
                    }
                };
                if let Some(call) = settle_slot.as_mut().as_pin_mut() {
                    if let Poll::Ready(result) = call.poll(cx) {
                        settle_slot.set(None);
                        settled(result);
                    }
                }
                while let Poll::Ready(Some(result)) = settling.poll_next_unpin(cx) {
                    settled(result);
                }
                while let Poll::Ready(Some(result)) = settling_together.poll_next_unpin(cx) {
                    settled(result);
                }
                while let Poll::Ready(Some(result)) = releasing.poll_next_unpin(cx) {
                    settled(result);
                }
            }

            // Checked after the handlers ran and before a new receive starts: a shutdown that a
            // handler brought about starts no receive (a JetStream fetch left pending would
            // take the messages given back at the stop).
            if !stopping && shutdown.as_mut().poll(cx).is_ready() {
                stopping = true;
            }

            // Receive, up to the prefetch.
            // A source that receives batches (a pull) receives again once every message it
            // brought was handed out, so one call asks for what the prefetch has room for, not
            // one message per finished handler.
            if !stopping
                && receiving.is_none()
                && outstanding < prefetch
                && (!pulls || ready.is_empty())
            {
                if let Some(source) = idle.take() {
                    let max = prefetch - outstanding;
                    receiving.set(Some(async move {
                        // The clock is read for receive spans only.
                        let started = receive_spans.then(SystemTime::now);
                        let (source, result) = source.receive(max).await;
                        (source, result, started)
                    }));
                }
            }
            if !stopping {
                if let Some(receive) = receiving.as_mut().as_pin_mut() {
                    if let Poll::Ready((source, result, started)) = receive.poll(cx) {
                        receiving.set(None);
                        progress = true;
                        let (one, many) = match result {
                            Ok(Received::One(message)) => (Some(message), Vec::new()),
                            Ok(Received::Batch(messages)) => {
                                pulls = true;
                                (None, messages)
                            }
                            Ok(Received::Closed) => {
                                stopping = true;
                                (None, Vec::new())
                            }
                            Err(error) => {
                                if let Some(started) = started {
                                    instrumentation.receive_failed(
                                        source.destination().unwrap_or_default(),
                                        started,
                                        error.error_type(),
                                    );
                                }
                                stopping = true;
                                keep_first(&mut outcome, ConsumeError::receive(error));
                                (None, Vec::new())
                            }
                        };
                        let received = match &one {
                            Some(message) => std::slice::from_ref(message),
                            None => many.as_slice(),
                        };
                        if let (Some(started), false) = (started, received.is_empty()) {
                            let destination = source
                                .destination()
                                .unwrap_or_else(|| received[0].destination());
                            if let Some(span) =
                                instrumentation.receive_span(destination, started, received)
                            {
                                span.end();
                            }
                        }
                        for message in one.into_iter().chain(many) {
                            outstanding += 1;
                            match source.ordering_key(&message) {
                                Some(key) => match running.get_mut(&key) {
                                    Some(behind) => behind.push_back(message),
                                    None => {
                                        running.insert(key, VecDeque::new());
                                        ready.push_back((message, Some(key)));
                                    }
                                },
                                None => ready.push_back((message, None)),
                            }
                        }
                        idle = Some(source);
                    }
                }
            }

            if stopping {
                // Stop receiving (a receive in progress is dropped, see `Source`) and give
                // back what was received but not handled.
                receiving.set(None);
                let mut unhandled: Vec<_> = ready.drain(..).map(|(message, _)| message).collect();
                for behind in running.values_mut() {
                    unhandled.extend(behind.drain(..));
                }
                if !unhandled.is_empty() {
                    outstanding -= unhandled.len();
                    releasing.push(release(&settler, unhandled));
                    progress = true;
                }
                if handler_slot.is_none()
                    && in_flight.is_empty()
                    && settle_slot.is_none()
                    && settling.is_empty()
                    && settling_together.is_empty()
                    && releasing.is_empty()
                {
                    return Poll::Ready(());
                }
            }
            if !progress {
                return Poll::Pending;
            }
        })
        .await;
        if let Err(error) = settler.close().await {
            keep_first(
                &mut outcome,
                SettleFailure::close(error).into_consume_error(),
            );
        }
        outcome
    }

    /// Consumes in batches until `shutdown` completes, the source ends, or a failure stops it:
    /// batches are filled per [`with_batch`](Consumer::with_batch), handed to `handler` one at a
    /// time inside one CONSUMER `process` span with a link per message (the core's
    /// [`BatchConsumerLayer`](crate::BatchConsumerLayer), applied here), and every message of a
    /// batch is settled after the handler's outcome (all acknowledged, or all settled per the
    /// [`OnFailure`] policy).
    ///
    /// A batch still filling when `shutdown` completes is given back unhandled.
    pub async fn run_batches<S, F>(
        self,
        handler: S,
        shutdown: F,
    ) -> Result<(), ConsumeError<S::Error>>
    where
        S: Service<Vec<Src::Message>>,
        C: ClassifyError<S::Error> + Clone,
        F: Future,
    {
        let Consumer {
            source,
            instrumentation,
            classify,
            concurrency: _,
            prefetch: _,
            on_failure,
            settle_spans,
            receive_spans,
            batch: config,
        } = self;
        let receive_spans = receive_spans.unwrap_or_else(|| source.receive_spans_by_default());
        let settler = source.settler();
        let failure_event = failure_event(on_failure);
        let mut service = crate::BatchConsumerLayer::from(instrumentation.clone())
            .with_error_type(classify)
            .layer(handler);
        let mut shutdown = pin!(shutdown);
        let mut receiving = pin!(None);
        let mut idle = Some(source);
        let mut outcome: Result<(), ConsumeError<S::Error>> = Ok(());
        let mut batch: Vec<Src::Message> = Vec::with_capacity(config.max_messages);
        let mut stopping = false;

        while !stopping {
            // Fill a batch.
            let mut deadline: Option<tokio::time::Instant> = None;
            while batch.len() < config.max_messages && !stopping {
                if receiving.is_none() {
                    if let Some(source) = idle.take() {
                        let max = config.max_messages - batch.len();
                        receiving.set(Some(async move {
                            let started = SystemTime::now();
                            let (source, result) = source.receive(max).await;
                            (source, result, started)
                        }));
                    }
                }
                let until = deadline;
                let mut sleep = pin!(async move {
                    match until {
                        Some(deadline) => tokio::time::sleep_until(deadline).await,
                        None => std::future::pending().await,
                    }
                });
                let event = poll_fn(|cx| {
                    if shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(None);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(None));
                    }
                    match receiving.as_mut().as_pin_mut() {
                        Some(receive) => receive.poll(cx).map(|done| Some(Some(done))),
                        None => Poll::Pending,
                    }
                })
                .await;
                match event {
                    // Shutdown: the partial batch is given back below.
                    None => stopping = true,
                    // The batch waited long enough: handle what it has.
                    Some(None) => break,
                    Some(Some((source, result, started))) => {
                        receiving.set(None);
                        let first = batch.len();
                        match result {
                            Ok(Received::One(message)) => batch.push(message),
                            Ok(Received::Batch(messages)) => batch.extend(messages),
                            Ok(Received::Closed) => stopping = true,
                            Err(error) => {
                                if receive_spans {
                                    instrumentation.receive_failed(
                                        source.destination().unwrap_or_default(),
                                        started,
                                        error.error_type(),
                                    );
                                }
                                stopping = true;
                                keep_first(&mut outcome, ConsumeError::receive(error));
                            }
                        }
                        let received = &batch[first..];
                        if receive_spans && !received.is_empty() {
                            let destination = source
                                .destination()
                                .unwrap_or_else(|| received[0].destination());
                            if let Some(span) =
                                instrumentation.receive_span(destination, started, received)
                            {
                                span.end();
                            }
                        }
                        if deadline.is_none() && !batch.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + config.max_wait);
                        }
                        idle = Some(source);
                    }
                }
            }
            receiving.set(None);
            if batch.is_empty() {
                continue;
            }
            let messages = std::mem::replace(&mut batch, Vec::with_capacity(config.max_messages));
            if stopping {
                // Shutdown, a closed source or a failed receive while filling: the partial
                // batch goes back unhandled.
                if let Err(failure) = release(&settler, messages).await {
                    keep_first(&mut outcome, failure.into_consume_error());
                }
                break;
            }
            let receipts: Vec<_> = messages.iter().map(|m| settler.receipt(m)).collect();
            let targets: Vec<_> = match settle_spans {
                true => messages.iter().map(|m| Some(SettleTarget::of(m))).collect(),
                false => Vec::new(),
            };
            if let Err(error) = poll_fn(|cx| service.poll_ready(cx)).await {
                keep_first(&mut outcome, ConsumeError::NotReady(error));
                if let Err(failure) = release(&settler, messages).await {
                    keep_first(&mut outcome, failure.into_consume_error());
                }
                break;
            }
            let (process_cx, handled) = service.call_in_span(messages);
            let settlement = match handled.with_failure_event(failure_event).await {
                Ok(_) => Settlement::Ack,
                Err(error) => {
                    if on_failure == OnFailure::Stop {
                        stopping = true;
                        keep_first(&mut outcome, ConsumeError::Handler(error));
                    }
                    on_failure.settlement()
                }
            };
            let settled = crate::consume::settle::settle_batch(
                &settler,
                &instrumentation,
                receipts,
                settlement,
                targets,
                settle_spans.then_some(process_cx),
            )
            .await;
            if let Err(failure) = settled {
                stopping = true;
                keep_first(&mut outcome, failure.into_consume_error());
            }
        }
        if let Err(error) = settler.close().await {
            keep_first(
                &mut outcome,
                SettleFailure::close(error).into_consume_error(),
            );
        }
        outcome
    }
}

/// A handler's outcome with what its message's settlement needs.
struct Handled<R, E> {
    result: Result<(), E>,
    receipt: R,
    key: Option<u64>,
    target: Option<SettleTarget>,
    process_cx: Option<Context>,
}

/// One future type for every handler call of a consumer, carrying its message's receipt.
fn tagged<F, T, E, R>(
    handled: F,
    receipt: R,
    key: Option<u64>,
    target: Option<SettleTarget>,
    process_cx: Option<Context>,
) -> impl Future<Output = Handled<R, E>>
where
    F: Future<Output = Result<T, E>>,
{
    handled.map(move |result| Handled {
        result: result.map(drop),
        receipt,
        key,
        target,
        process_cx,
    })
}

fn keep_first<E>(outcome: &mut Result<(), E>, error: E) {
    if outcome.is_ok() {
        *outcome = Err(error);
    }
}

/// The event a failed handler's `process` span gets under `policy`. Only a policy that drops
/// the message says so: the others are visible in the settle span, if any, and in redelivery.
fn failure_event(policy: OnFailure) -> Option<&'static str> {
    match policy {
        OnFailure::Reject => Some("message rejected"),
        _ => None,
    }
}
