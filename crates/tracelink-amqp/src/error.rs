//! Errors of the traced publish and of the consume loop, with their `error.type` values.

use std::borrow::Cow;

use lapin::message::BasicReturnMessage;
use lapin::protocol::AMQPErrorKind;
use lapin::ErrorKind;
use tracelink_core::{ErrorType, OTHER_ERROR};

/// The `error.type` of a lapin error: the AMQP reply name for broker errors (`NOT-FOUND`,
/// `ACCESS-REFUSED`, `CONNECTION-FORCED`, ...), `channel_closed`/`connection_closed` for
/// operations on a closed channel or connection, `io`, `missing_heartbeat`, or `_OTHER`.
pub fn lapin_error_type(error: &lapin::Error) -> Cow<'static, str> {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            // The reply name alone (`NOT-FOUND`): a small, fixed set.
            AMQPErrorKind::Soft(e) => Cow::Owned(e.to_string()),
            AMQPErrorKind::Hard(e) => Cow::Owned(e.to_string()),
        },
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_) => {
            Cow::Borrowed("channel_closed")
        }
        ErrorKind::InvalidConnectionState(_) => Cow::Borrowed("connection_closed"),
        ErrorKind::IOError(_) | ErrorKind::RuntimeShutdownError(_) => Cow::Borrowed("io"),
        ErrorKind::MissingHeartbeatError => Cow::Borrowed("missing_heartbeat"),
        _ => Cow::Borrowed(OTHER_ERROR),
    }
}

/// Why a traced publish failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker negatively confirmed the message (`error.type` = `nack`): it was not stored,
    /// for example because a queue with `x-overflow: reject-publish` was full.
    #[error("the broker rejected the message (basic.nack)")]
    Nacked(Option<Box<BasicReturnMessage>>),
    /// A `mandatory` message could not be routed to any queue and came back (`error.type` =
    /// `unroutable`).
    #[error("the message could not be routed and was returned: {}", .0.reply_text)]
    Returned(Box<BasicReturnMessage>),
    /// lapin failed: the channel or connection is closed, the broker closed the channel (an
    /// unknown exchange, ...), an IO error. `error.type` from [`lapin_error_type`].
    #[error(transparent)]
    Lapin(#[from] lapin::Error),
}

impl ErrorType for PublishError {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            PublishError::Nacked(_) => Cow::Borrowed("nack"),
            PublishError::Returned(_) => Cow::Borrowed("unroutable"),
            PublishError::Lapin(e) => lapin_error_type(e),
        }
    }
}

/// Why the [`ConsumeLoop`](crate::ConsumeLoop) stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The consumer failed: its channel or connection closed (unacknowledged messages go back
    /// to the queue, RabbitMQ's own guarantee).
    #[error("the consumer failed: {0}")]
    Consumer(#[source] lapin::Error),
    /// Acknowledging or rejecting a message failed, which means the channel is gone.
    #[error("settling a message failed: {0}")]
    Settle(#[source] lapin::Error),
    /// The handler service reported that it cannot take messages any more.
    #[error("the handler failed to become ready: {0}")]
    NotReady(#[source] tower::BoxError),
}

impl ErrorType for ConsumeError {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            ConsumeError::Consumer(e) | ConsumeError::Settle(e) => lapin_error_type(e),
            ConsumeError::NotReady(_) => Cow::Borrowed(OTHER_ERROR),
        }
    }
}
