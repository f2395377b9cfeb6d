//! The JetStream pull consumer: a pull consumer as the core's [`Source`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::AckKind;
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use tracelink_core::{
    Consumer, DefaultErrorType, Destination, Received, Settlement, Settler, Source,
};

use crate::error::Error;
use crate::message::JetStreamDelivery;

/// A traced JetStream pull consumer: the core's [`Consumer`] over a [`JetStreamSource`].
///
/// Each message is settled **after** its handler finished: `ack` on success; on failure, per
/// the [`OnFailure`](tracelink_core::OnFailure) policy, `nak` (redelivered at once, or per the
/// consumer's back-off), `nak` with a delay, or `term` (never redelivered). Messages received
/// but not handled when the consumer stops are given back with `nak`. A message whose
/// settlement could not be sent (connection lost) is redelivered by the server after the
/// consumer's ack wait. With [`with_settle_spans`](Consumer::with_settle_spans), each settlement
/// is a CLIENT span `ack {subject}`, `nak {subject}` or `term {subject}`, child of the
/// message's `process` span.
///
/// A receive is one fetch ([`JetStreamSource`]); `receive {stream}` spans are on by default
/// (one per fetch that brought messages, with a link per message). Up to 100 messages are
/// fetched ahead of the handlers ([`with_prefetch`](Consumer::with_prefetch)). A message
/// fetched ahead waits for a handler while its ack wait runs: keep the prefetch times the
/// handler's time (over the concurrency) below the pull consumer's `ack_wait`, or JetStream
/// delivers it again meanwhile.
///
/// **Set `max_deliver` on consumers that read from untrusted producers.** async-nats 0.51
/// treats a message whose header block is not UTF-8 as a protocol error: it drops the
/// connection and reconnects, the message never reaches tracelink, and JetStream redelivers it,
/// resetting the connection each time until `max_deliver` is reached (see
/// `docs/RELIABILITY.md`).
pub type JetStreamConsumer<C = DefaultErrorType> = Consumer<JetStreamSource, C>;

/// A JetStream pull consumer as the source of a [`JetStreamConsumer`].
///
/// Each receive fetches what the stream has ready, up to the number asked for, without waiting;
/// when nothing is ready it waits up to the expiry ([`with_expires`](JetStreamSource::with_expires),
/// default 5 s) for the next message, and brings an empty batch when none came.
///
/// A failed fetch (connection lost, server restarting, pull request timed out) is retried, after
/// a pause growing from 100 ms to 2 s, while fetches keep failing for less than
/// [`with_retry_for`](JetStreamSource::with_retry_for) (default 60 s); then the consumer stops
/// with the error.
#[derive(Debug, Clone)]
pub struct JetStreamSource {
    consumer: PullConsumer,
    stream: String,
    expires: Duration,
    retry_for: Duration,
}

impl JetStreamSource {
    /// A source fetching from `consumer`.
    pub fn new(consumer: PullConsumer) -> Self {
        let stream = consumer.cached_info().stream_name.clone();
        Self {
            consumer,
            stream,
            expires: Duration::from_secs(5),
            retry_for: Duration::from_secs(60),
        }
    }

    /// How long a fetch waits for a message when none is ready (default 5 s).
    pub fn with_expires(mut self, expires: Duration) -> Self {
        self.expires = expires;
        self
    }

    /// How long fetches may keep failing before the consumer stops (default 60 s; zero: the
    /// first failure stops it).
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// The pull consumer.
    pub fn consumer(&self) -> &PullConsumer {
        &self.consumer
    }

    /// The stream's name (the destination of `receive` spans).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// One fetch: what is ready, up to `max`; else up to the expiry for one message.
    async fn fetch(&self, max: usize) -> Result<Vec<JetStreamDelivery>, Error> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            // Bounds the wait for the answer too: a pull request lost with the connection
            // must not hang the consumer.
            .expires(self.expires)
            .messages()
            .await?;
        let mut messages = collect(&mut batch, max).await?;
        if messages.is_empty() {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(self.expires)
                .messages()
                .await?;
            messages = collect(&mut batch, 1).await?;
        }
        Ok(messages)
    }
}

impl From<PullConsumer> for JetStreamSource {
    fn from(consumer: PullConsumer) -> Self {
        Self::new(consumer)
    }
}

impl Source for JetStreamSource {
    type Message = JetStreamDelivery;
    type Error = Error;
    type Settler = JetStreamSettler;

    fn settler(&self) -> JetStreamSettler {
        JetStreamSettler::default()
    }

    async fn receive(self, max: usize) -> (Self, Result<Received<JetStreamDelivery>, Error>) {
        let mut failing_since = None;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.fetch(max.max(1)).await {
                Ok(messages) => return (self, Ok(Received::Batch(messages))),
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= self.retry_for {
                        return (self, Err(error));
                    }
                    // The client reconnects by itself: ask again.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn destination(&self) -> Option<Destination<'_>> {
        Some(Destination::new(&self.stream))
    }

    fn default_prefetch(&self) -> usize {
        100
    }

    fn receive_spans_by_default(&self) -> bool {
        true
    }
}

async fn collect(
    batch: &mut async_nats::jetstream::consumer::pull::Batch,
    max: usize,
) -> Result<Vec<JetStreamDelivery>, Error> {
    let mut messages = Vec::with_capacity(max.min(16));
    while let Some(item) = batch.next().await {
        match item {
            Ok(message) => messages.push(JetStreamDelivery::new(message)),
            // Messages already received are valid deliveries: handle them; the next fetch
            // reports the failure if it persists.
            Err(_) if !messages.is_empty() => break,
            Err(err) => return Err(Error::Messages(err)),
        }
    }
    Ok(messages)
}

/// Settles JetStream messages by publishing to their reply subject: `ack` (`+ACK`), `nak`
/// (`-NAK`, with a delay when the policy gives one; also for messages given back unhandled) and
/// `term` (`+TERM`). Acknowledgements are not confirmed by the server (as async-nats'
/// `Acker::ack_with`).
#[derive(Debug, Default)]
pub struct JetStreamSettler {
    // Taken from the first message: one client per consumer, not one clone per message.
    client: OnceLock<Arc<Client>>,
}

/// What a [`JetStreamSettler`] keeps of a message: its reply (ack) subject.
#[derive(Debug)]
pub struct JetStreamReceipt {
    client: Arc<Client>,
    reply: Option<Subject>,
}

fn ack_kind(settlement: Settlement) -> AckKind {
    match settlement {
        Settlement::Ack => AckKind::Ack,
        Settlement::Redeliver { delay } => AckKind::Nak(delay),
        Settlement::Reject => AckKind::Term,
        // `Settlement` is non-exhaustive: `Release` and anything new give the message back.
        _ => AckKind::Nak(None),
    }
}

impl Settler<JetStreamDelivery> for JetStreamSettler {
    type Receipt = JetStreamReceipt;
    type Error = Error;

    fn receipt(&self, message: &JetStreamDelivery) -> JetStreamReceipt {
        let client = self
            .client
            .get_or_init(|| Arc::new(message.message.context.client()));
        JetStreamReceipt {
            client: Arc::clone(client),
            reply: message.message.reply.clone(),
        }
    }

    fn operation(&self, settlement: Settlement) -> Option<&'static str> {
        Some(match ack_kind(settlement) {
            AckKind::Ack => "ack",
            AckKind::Term => "term",
            _ => "nak",
        })
    }

    fn settle(
        &self,
        receipt: JetStreamReceipt,
        settlement: Settlement,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static + use<> {
        let kind = ack_kind(settlement);
        async move {
            let JetStreamReceipt { client, reply } = receipt;
            let Some(reply) = reply else {
                return Err(Error::Ack(Box::new(std::io::Error::other(
                    "no reply subject, not a JetStream message",
                ))));
            };
            let payload: Bytes = kind.into();
            client
                .publish(reply, payload)
                .await
                .map_err(|e| Error::Ack(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_map_to_jetstream_verbs() {
        let settler = JetStreamSettler::default();
        let delay = Duration::from_millis(250);
        let cases = [
            (Settlement::Ack, "ack", &b"+ACK"[..]),
            (Settlement::Redeliver { delay: None }, "nak", b"-NAK"),
            (
                Settlement::Redeliver { delay: Some(delay) },
                "nak",
                b"-NAK {\"delay\":250000000}",
            ),
            (Settlement::Reject, "term", b"+TERM"),
            (Settlement::Release, "nak", b"-NAK"),
        ];
        for (settlement, verb, payload) in cases {
            assert_eq!(settler.operation(settlement), Some(verb), "{settlement:?}");
            let sent: Bytes = ack_kind(settlement).into();
            assert_eq!(&sent[..], payload, "{settlement:?}");
        }
    }
}
