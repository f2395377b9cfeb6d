//! The JetStream pull-consumer loop.

use std::future::poll_fn;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::AckKind;
use futures_util::StreamExt;
use tower::Service;
use tracelink_core::{Destination, ErrorType, Instrumentation};

use crate::error::Error;
use crate::message::JetStreamDelivery;

/// Drives a JetStream pull consumer: fetches messages, records a CLIENT `receive {stream}` span
/// per non-empty fetch (none for an empty one), hands each message (or each fetched batch) to a
/// handler service, usually wrapped in a [`ConsumerLayer`](tracelink_core::ConsumerLayer) (or a
/// [`BatchConsumerLayer`](tracelink_core::BatchConsumerLayer)), and settles it **after** the
/// handler finished:
///
/// * handler succeeded: `ack`;
/// * handler failed (or its `poll_ready` failed): `nak`, with the configured delay
///   ([`with_nak_delay`](JetStreamConsumer::with_nak_delay)), so JetStream redelivers it.
///
/// Nothing is acknowledged before its handler succeeded. A message whose settlement could not be
/// sent (connection lost) is redelivered by the server after the consumer's ack wait.
///
/// Each fetch takes what the stream has ready, up to the batch size, without waiting; when
/// nothing is ready it waits up to the expiry for the next message.
///
/// **Set `max_deliver` on consumers that read from untrusted producers.** async-nats 0.51
/// treats a message whose header block is not UTF-8 as a protocol error: it drops the
/// connection and reconnects, the message never reaches tracelink, and JetStream redelivers it,
/// resetting the connection each time until `max_deliver` is reached (see
/// `docs/RELIABILITY.md`).
#[derive(Debug)]
pub struct JetStreamConsumer {
    consumer: PullConsumer,
    instrumentation: Instrumentation,
    stream: String,
    batch_size: usize,
    expires: Duration,
    nak_delay: Option<Duration>,
}

impl JetStreamConsumer {
    /// Consumes from `consumer`; receive spans come from `instrumentation`.
    pub fn new(consumer: PullConsumer, instrumentation: Instrumentation) -> Self {
        let stream = consumer.cached_info().stream_name.clone();
        Self {
            consumer,
            instrumentation,
            stream,
            batch_size: 100,
            expires: Duration::from_secs(5),
            nak_delay: None,
        }
    }

    /// Fetches at most `size` messages at a time (default 100; at least 1).
    pub fn with_batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long a fetch waits for a message when none is ready (default 5 s).
    pub fn with_expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// Asks JetStream to wait `delay` before redelivering a message whose handler failed
    /// (default: redeliver at once, or per the consumer's back-off).
    pub fn with_nak_delay(mut self, delay: Duration) -> Self {
        self.nak_delay = Some(delay);
        self
    }

    /// The pull consumer.
    pub fn consumer(&self) -> &PullConsumer {
        &self.consumer
    }

    async fn fetch(&mut self) -> Result<Vec<(JetStreamDelivery, Acker)>, Error> {
        let started = SystemTime::now();
        let result = self.fetch_from(started).await;
        if let Err(error) = &result {
            self.instrumentation.receive_failed(
                Destination::new(&self.stream),
                started,
                error.error_type(),
            );
        }
        result
    }

    async fn fetch_from(
        &mut self,
        started: SystemTime,
    ) -> Result<Vec<(JetStreamDelivery, Acker)>, Error> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(self.batch_size)
            // Bounds the wait for the answer too: a pull request lost with the connection
            // must not hang the loop.
            .expires(self.expires)
            .messages()
            .await?;
        let mut messages = collect(&mut batch).await?;
        if messages.is_empty() {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(self.expires)
                .messages()
                .await?;
            messages = collect(&mut batch).await?;
        }
        let deliveries: Vec<JetStreamDelivery> =
            messages.into_iter().map(JetStreamDelivery::new).collect();
        let destination = Destination::new(&self.stream);
        if let Some(span) = self
            .instrumentation
            .receive_span(destination, started, &deliveries)
        {
            span.end();
        }
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let acker = Acker::new(d.message.context.clone(), d.message.reply.clone());
                (d, acker)
            })
            .collect())
    }

    async fn settle(&self, acker: &Acker, succeeded: bool) -> Result<(), Error> {
        let kind = if succeeded {
            AckKind::Ack
        } else {
            AckKind::Nak(self.nak_delay)
        };
        acker.ack_with(kind).await.map_err(Error::Ack)
    }

    /// Fetches once and hands each message to `handler`, in order, settling each after its
    /// handler finished. Returns how many messages were fetched (0 when none arrived before the
    /// expiry).
    pub async fn process_next<S>(&mut self, handler: &mut S) -> Result<usize, Error>
    where
        S: Service<JetStreamDelivery>,
    {
        let messages = self.fetch().await?;
        let count = messages.len();
        for (delivery, acker) in messages {
            let succeeded = match poll_fn(|cx| handler.poll_ready(cx)).await {
                Ok(()) => handler.call(delivery).await.is_ok(),
                Err(_) => false,
            };
            self.settle(&acker, succeeded).await?;
        }
        Ok(count)
    }

    /// Fetches once and hands the whole fetch to `handler` as one batch (wrap it in a
    /// [`BatchConsumerLayer`](tracelink_core::BatchConsumerLayer): one `process` span with one
    /// link per message); acks every message when it succeeded, naks every one when it failed.
    /// An empty fetch does not call the handler.
    pub async fn process_next_batch<S>(&mut self, handler: &mut S) -> Result<usize, Error>
    where
        S: Service<Vec<JetStreamDelivery>>,
    {
        let messages = self.fetch().await?;
        let count = messages.len();
        if count == 0 {
            return Ok(0);
        }
        let (deliveries, ackers): (Vec<_>, Vec<_>) = messages.into_iter().unzip();
        let succeeded = match poll_fn(|cx| handler.poll_ready(cx)).await {
            Ok(()) => handler.call(deliveries).await.is_ok(),
            Err(_) => false,
        };
        for acker in &ackers {
            self.settle(acker, succeeded).await?;
        }
        Ok(count)
    }

    /// Runs [`process_next`](JetStreamConsumer::process_next) until fetching or settling fails,
    /// and returns that error (call it again to resume: unsettled messages are redelivered).
    pub async fn run<S>(&mut self, mut handler: S) -> Result<(), Error>
    where
        S: Service<JetStreamDelivery>,
    {
        loop {
            self.process_next(&mut handler).await?;
        }
    }

    /// Runs [`process_next_batch`](JetStreamConsumer::process_next_batch) until fetching or
    /// settling fails, and returns that error.
    pub async fn run_batches<S>(&mut self, mut handler: S) -> Result<(), Error>
    where
        S: Service<Vec<JetStreamDelivery>>,
    {
        loop {
            self.process_next_batch(&mut handler).await?;
        }
    }
}

async fn collect(
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
) -> Result<Vec<async_nats::jetstream::Message>, Error> {
    let mut messages = Vec::new();
    while let Some(item) = batch.next().await {
        match item {
            Ok(message) => messages.push(message),
            // Messages already received are valid deliveries: handle them; the next fetch
            // reports the failure if it persists.
            Err(_) if !messages.is_empty() => break,
            Err(err) => return Err(Error::Messages(err)),
        }
    }
    Ok(messages)
}
