//! Errors of the traced publish and of the consumer, with their `error.type` values.

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

/// A lapin failure on the consume side: receiving (the consumer's channel or connection closed)
/// or settling (`basic.ack`, `basic.nack`, `basic.reject`). The `source` of a
/// [`tracelink_core::ConsumeError::Receive`] or [`Settle`](tracelink_core::ConsumeError::Settle)
/// from an [`AmqpConsumer`](crate::AmqpConsumer); `error.type` from [`lapin_error_type`].
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct AmqpError(#[from] lapin::Error);

impl AmqpError {
    /// A settlement that could not be sent because the delivery's channel is closed or failed
    /// (lapin poisons the acker): `error.type` = `channel_closed`.
    pub(crate) fn channel_closed(operation: &'static str) -> Self {
        Self(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
            lapin::ChannelState::Closed,
            operation,
        )))
    }

    /// The lapin error.
    pub fn lapin(&self) -> &lapin::Error {
        &self.0
    }

    /// Unwraps the lapin error.
    pub fn into_lapin(self) -> lapin::Error {
        self.0
    }
}

impl ErrorType for AmqpError {
    fn error_type(&self) -> Cow<'static, str> {
        lapin_error_type(&self.0)
    }
}
