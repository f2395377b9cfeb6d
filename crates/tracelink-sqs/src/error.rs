//! The adapter's errors and their `error.type` values.

use std::borrow::Cow;
use std::error::Error as StdError;

use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::BatchResultErrorEntry;
use tracelink_core::ErrorType;

/// `error.type` of an SDK call that failed before SQS answered with an error code.
const TIMEOUT: &str = "timeout";
const DISPATCH_FAILURE: &str = "dispatch_failure";
const RESPONSE_ERROR: &str = "response_error";
const CONSTRUCTION_FAILURE: &str = "construction_failure";

/// A failed SQS call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsError {
    /// The SDK call failed; `code` is the SQS error code (e.g.
    /// `AWS.SimpleQueueService.NonExistentQueue`) or, when SQS did not answer, `timeout`,
    /// `dispatch_failure`, `response_error` or `construction_failure`.
    #[error("SQS {operation} failed: {code}")]
    Sdk {
        /// The SQS operation (`SendMessage`, ...).
        operation: &'static str,
        /// The error code; the span's `error.type`.
        code: Cow<'static, str>,
        /// The SDK's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// SQS refused one entry of a batch call (`DeleteMessageBatch`,
    /// `ChangeMessageVisibilityBatch`); the other entries may have succeeded.
    #[error("SQS {operation} refused an entry: {}", source.code)]
    Entry {
        /// The SQS operation.
        operation: &'static str,
        /// The refused entry; its code is the `error.type`.
        #[source]
        source: EntryError,
    },
    /// A `SendMessageBatch` needs 1 to 10 messages.
    #[error("a batch holds 1 to 10 messages, not {0}")]
    BatchSize(usize),
    /// The messages of one batch go to different queues.
    #[error("the messages of a batch must all go to the same queue")]
    MixedQueues,
}

impl SqsError {
    pub(crate) fn sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let code = match &err {
            SdkError::ServiceError(_) => err
                .code()
                .map(|c| Cow::Owned(c.to_owned()))
                .unwrap_or(Cow::Borrowed(tracelink_core::OTHER_ERROR)),
            SdkError::TimeoutError(_) => Cow::Borrowed(TIMEOUT),
            SdkError::DispatchFailure(_) => Cow::Borrowed(DISPATCH_FAILURE),
            SdkError::ResponseError(_) => Cow::Borrowed(RESPONSE_ERROR),
            SdkError::ConstructionFailure(_) => Cow::Borrowed(CONSTRUCTION_FAILURE),
            _ => Cow::Borrowed(tracelink_core::OTHER_ERROR),
        };
        SqsError::Sdk {
            operation,
            code,
            source: Box::new(err),
        }
    }

    /// The error code: the SQS code, or one of ours.
    pub fn code(&self) -> &str {
        match self {
            SqsError::Sdk { code, .. } => code,
            SqsError::Entry { source, .. } => &source.code,
            SqsError::BatchSize(_) => "batch_size",
            SqsError::MixedQueues => "mixed_queues",
        }
    }
}

impl ErrorType for SqsError {
    fn error_type(&self) -> Cow<'static, str> {
        match self {
            SqsError::Sdk { code, .. } => code.clone(),
            SqsError::Entry { source, .. } => Cow::Owned(source.code.clone()),
            SqsError::BatchSize(_) => Cow::Borrowed("batch_size"),
            SqsError::MixedQueues => Cow::Borrowed("mixed_queues"),
        }
    }
}

/// One entry of a `SendMessageBatch` (or a delete/visibility batch) that SQS refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("SQS refused batch entry {id}: {code}")]
pub struct EntryError {
    /// The entry id in the request.
    pub id: String,
    /// The SQS error code; the entry's `error.type`.
    pub code: String,
    /// SQS's message.
    pub message: Option<String>,
    /// Whether the sender was at fault (retrying the same entry will fail again).
    pub sender_fault: bool,
}

impl From<&BatchResultErrorEntry> for EntryError {
    fn from(entry: &BatchResultErrorEntry) -> Self {
        Self {
            id: entry.id().to_owned(),
            code: entry.code().to_owned(),
            message: entry.message().map(str::to_owned),
            sender_fault: entry.sender_fault(),
        }
    }
}

impl ErrorType for EntryError {
    fn error_type(&self) -> Cow<'static, str> {
        Cow::Owned(self.code.clone())
    }
}
