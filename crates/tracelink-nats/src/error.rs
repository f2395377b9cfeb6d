//! The adapter's errors.

use std::borrow::Cow;

use async_nats::client::{PublishErrorKind, RequestErrorKind, SubscribeErrorKind};
use async_nats::jetstream::consumer::pull::BatchErrorKind;
use async_nats::jetstream::context::PublishErrorKind as JetStreamPublishErrorKind;
use tracelink_core::ErrorType;

/// An error of the NATS adapter: the async-nats error it wraps, by operation.
///
/// Its [`ErrorType`] (`error.type` on spans and metrics) is the snake-case name of the
/// async-nats error kind, such as `timed_out`, `no_responders` or `stream_not_found`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A core NATS publish failed.
    #[error("NATS publish failed: {0}")]
    Publish(#[from] async_nats::PublishError),
    /// A request failed or got no answer in time.
    #[error("NATS request failed: {0}")]
    Request(#[from] async_nats::RequestError),
    /// Subscribing failed.
    #[error("NATS subscribe failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    /// Unsubscribing failed (the client is closed).
    #[error("NATS unsubscribe failed: {0}")]
    Unsubscribe(#[from] async_nats::UnsubscribeError),
    /// A JetStream publish failed or was not acknowledged.
    #[error("JetStream publish failed: {0}")]
    JetStreamPublish(#[from] async_nats::jetstream::context::PublishError),
    /// A JetStream pull request failed.
    #[error("JetStream fetch failed: {0}")]
    Fetch(#[from] async_nats::jetstream::consumer::pull::BatchError),
    /// A JetStream message could not be read from a pull response (connection lost, ...).
    #[error("JetStream message stream failed: {0}")]
    Messages(#[source] async_nats::Error),
    /// Acknowledging (ack or nak) a JetStream message failed; the server redelivers it after its
    /// ack wait.
    #[error("JetStream acknowledgement failed: {0}")]
    Ack(#[source] async_nats::Error),
    /// A request to respond to carried no reply subject.
    #[error("the request has no reply subject")]
    NoReplySubject,
}

fn snake(kind: impl std::fmt::Debug) -> Cow<'static, str> {
    let camel = format!("{kind:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

impl ErrorType for Error {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            Error::Publish(e) => match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => "max_payload_exceeded".into(),
                PublishErrorKind::InvalidSubject => "invalid_subject".into(),
                PublishErrorKind::Send => "send".into(),
            },
            Error::Request(e) => match e.kind() {
                RequestErrorKind::TimedOut => "timed_out".into(),
                RequestErrorKind::NoResponders => "no_responders".into(),
                kind => snake(kind),
            },
            Error::Subscribe(e) => match e.kind() {
                SubscribeErrorKind::InvalidSubject => "invalid_subject".into(),
                kind => snake(kind),
            },
            Error::JetStreamPublish(e) => match e.kind() {
                JetStreamPublishErrorKind::TimedOut => "timed_out".into(),
                JetStreamPublishErrorKind::StreamNotFound => "stream_not_found".into(),
                kind => snake(kind),
            },
            Error::Fetch(e) => match e.kind() {
                BatchErrorKind::Pull => "pull".into(),
                kind => snake(kind),
            },
            Error::Unsubscribe(_) => "unsubscribe".into(),
            Error::Messages(_) => "messages".into(),
            Error::Ack(_) => "ack".into(),
            Error::NoReplySubject => "no_reply_subject".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_are_snake_case_kinds() {
        let e = Error::Request(async_nats::RequestError::new(
            RequestErrorKind::NoResponders,
        ));
        assert_eq!(e.error_type(), "no_responders");
        let e = Error::JetStreamPublish(async_nats::jetstream::context::PublishError::new(
            JetStreamPublishErrorKind::WrongLastSequence,
        ));
        assert_eq!(e.error_type(), "wrong_last_sequence");
        assert_eq!(Error::NoReplySubject.error_type(), "no_reply_subject");
    }
}
