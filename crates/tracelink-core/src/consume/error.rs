//! Why a consumer stopped.

use std::borrow::Cow;

use tower::BoxError;

use crate::error_type::{ErrorType, OTHER_ERROR};

/// Why a consumer's `run` returned an error: the same type on every adapter, generic over the
/// handler's error `E`.
///
/// Whatever the variant, the consumer first stopped receiving, let the handlers in flight finish
/// and settled them: nothing was acknowledged before its handler succeeded, and a message not
/// settled is delivered again by the broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError<E> {
    /// Receiving failed: the client's connection, channel or subscription is gone, or the broker
    /// refused the receive. `source` is the client's error (downcast it to the adapter's type).
    #[error("receiving messages failed ({error_type})")]
    Receive {
        /// The failure's `error.type`.
        error_type: Cow<'static, str>,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// Settling a message failed (the message was not acknowledged, so the broker delivers it
    /// again). `source` is the client's error.
    #[error("settling a message with `{operation}` failed ({error_type})")]
    Settle {
        /// The settle operation (`ack`, `nack`, `delete`, `commit`, ...).
        operation: &'static str,
        /// The failure's `error.type`.
        error_type: Cow<'static, str>,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The handler failed under [`OnFailure::Stop`](crate::OnFailure::Stop); its message was
    /// given back for redelivery.
    #[error("the handler failed and the failure policy is to stop")]
    Handler(#[source] E),
    /// The handler's `poll_ready` failed: it cannot take messages any more. The messages
    /// received but not handled were given back.
    #[error("the handler failed to become ready")]
    NotReady(#[source] E),
}

impl<E> ConsumeError<E> {
    pub(crate) fn receive<X: ErrorType + std::error::Error + Send + Sync + 'static>(
        error: X,
    ) -> Self {
        ConsumeError::Receive {
            error_type: error.error_type(),
            source: Box::new(error),
        }
    }
}

impl<E: ErrorType> ErrorType for ConsumeError<E> {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            ConsumeError::Receive { error_type, .. } | ConsumeError::Settle { error_type, .. } => {
                error_type.clone()
            }
            ConsumeError::Handler(e) | ConsumeError::NotReady(e) => e.error_type(),
        }
    }
}

impl<E> ConsumeError<E> {
    /// The `error.type` of a receive or settle failure; `_OTHER` for the handler's own errors
    /// (use [`ErrorType`] when `E` implements it).
    pub fn client_error_type(&self) -> Cow<'static, str> {
        match self {
            ConsumeError::Receive { error_type, .. } | ConsumeError::Settle { error_type, .. } => {
                error_type.clone()
            }
            _ => Cow::Borrowed(OTHER_ERROR),
        }
    }
}
