//! What happens to a message after its handler finished.

use std::time::Duration;

/// What a consumer does with a message whose handler failed. One policy for every adapter; what
/// each broker does for it is in the table of the README (and in each adapter's docs).
///
/// In every case the message is not acknowledged: it is settled only as the policy says, after
/// the handler's outcome, and the `process` span carries the failure (status Error,
/// `error.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Give the message back to the broker to be delivered again (the default): RabbitMQ
    /// `nack` with requeue, JetStream `nak`, SQS leaves it for its visibility timeout, Kafka
    /// rewinds the partition to it.
    #[default]
    Redeliver,
    /// Like [`Redeliver`](OnFailure::Redeliver), asking the broker to wait `delay` first where it
    /// can (JetStream `nak` with delay, SQS `ChangeMessageVisibility`); brokers that cannot
    /// delay redeliver at once.
    RedeliverAfter(Duration),
    /// Settle the message as failed for good: RabbitMQ `nack` without requeue (to the queue's
    /// dead-letter exchange, if any), JetStream `term`, SQS deletes it, Kafka commits past it.
    Reject,
    /// Give the message back as [`Redeliver`](OnFailure::Redeliver) does, stop receiving, let
    /// the handlers in flight finish and settle, and return
    /// [`ConsumeError::Handler`](crate::ConsumeError::Handler).
    Stop,
}

impl OnFailure {
    /// How a failed message is settled under this policy.
    pub(crate) fn settlement(self) -> Settlement {
        match self {
            OnFailure::Redeliver | OnFailure::Stop => Settlement::Redeliver { delay: None },
            OnFailure::RedeliverAfter(delay) => Settlement::Redeliver { delay: Some(delay) },
            OnFailure::Reject => Settlement::Reject,
        }
    }
}

/// What the consumer asks a [`Settler`](crate::Settler) to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// The handler succeeded: acknowledge, delete, commit.
    Ack,
    /// The handler failed: deliver the message again, after `delay` where the broker can wait.
    Redeliver {
        /// How long the broker should wait before redelivering, when the policy says.
        delay: Option<Duration>,
    },
    /// The handler failed: do not deliver the message again (dead-letter it where the broker
    /// and its configuration do so).
    Reject,
    /// The message was received but never handled, because the consumer stopped: give it back
    /// at once, without counting a failure where the broker tells the difference.
    Release,
}
