//! Settling a message after its handler's outcome, inside an optional settle span.

use std::borrow::Cow;
use std::future::Future;

use opentelemetry::{Context, KeyValue};
use opentelemetry_semantic_conventions::attribute as attr;
use tower::BoxError;

use crate::consume::error::ConsumeError;
use crate::consume::policy::Settlement;
use crate::consume::source::Settler;
use crate::error_type::ErrorType;
use crate::instrumentation::{Instrumentation, SettleSpan};
use crate::message::{Destination, IncomingMessage};

/// What a settle span says about its message, taken before the handler owns the message (only
/// when settle spans are on).
#[derive(Debug)]
pub(crate) struct SettleTarget {
    destination: String,
    template: Option<String>,
    temporary: bool,
    anonymous: bool,
    attributes: Vec<KeyValue>,
}

impl SettleTarget {
    pub(crate) fn of<M: IncomingMessage>(message: &M) -> Self {
        let destination = message.destination();
        let mut attributes = Vec::new();
        if let Some(id) = message.message_id() {
            attributes.push(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.into_owned()));
        }
        message.attributes(&mut attributes);
        Self {
            destination: destination.name.to_owned(),
            template: destination.template.map(str::to_owned),
            temporary: destination.temporary,
            anonymous: destination.anonymous,
            attributes,
        }
    }

    fn span(
        self,
        instrumentation: &Instrumentation,
        operation: &'static str,
        parent: &Context,
    ) -> SettleSpan {
        let destination = Destination {
            name: &self.destination,
            template: self.template.as_deref(),
            temporary: self.temporary,
            anonymous: self.anonymous,
        };
        instrumentation.settle_span(operation, destination, parent, self.attributes)
    }
}

/// A settlement that failed.
#[derive(Debug)]
pub(crate) struct SettleFailure {
    operation: &'static str,
    error_type: Cow<'static, str>,
    source: BoxError,
}

impl SettleFailure {
    fn new<E: std::error::Error + ErrorType + Send + Sync + 'static>(
        operation: &'static str,
        error: E,
    ) -> Self {
        Self {
            operation,
            error_type: error.error_type(),
            source: Box::new(error),
        }
    }

    /// The settler's closing call failed (Kafka's final commit).
    pub(crate) fn close<E: std::error::Error + ErrorType + Send + Sync + 'static>(
        error: E,
    ) -> Self {
        Self::new("close", error)
    }

    pub(crate) fn into_consume_error<H>(self) -> ConsumeError<H> {
        ConsumeError::Settle {
            operation: self.operation,
            error_type: self.error_type,
            source: self.source,
        }
    }
}

/// Settles one handled message, inside a settle span (child of its `process` span) when
/// `target` and `process_cx` are given and the settlement makes a call.
pub(crate) fn settle<M, St: Settler<M>>(
    settler: &St,
    instrumentation: &Instrumentation,
    receipt: St::Receipt,
    settlement: Settlement,
    target: Option<SettleTarget>,
    process_cx: Option<Context>,
) -> impl Future<Output = Result<(), SettleFailure>> + Send + 'static {
    let operation = settler.operation(settlement);
    let span = match (operation, target, process_cx) {
        (Some(operation), Some(target), Some(parent)) => {
            Some(target.span(instrumentation, operation, &parent))
        }
        _ => None,
    };
    let call = settler.settle(receipt, settlement);
    async move {
        let result = call.await;
        match result {
            Ok(()) => {
                if let Some(span) = span {
                    span.end();
                }
                Ok(())
            }
            Err(error) => {
                if let Some(span) = span {
                    span.fail(error.error_type());
                }
                Err(SettleFailure::new(operation.unwrap_or("settle"), error))
            }
        }
    }
}

/// Settles every message of a batch the same way, one settle span each (children of the
/// batch's `process` span) when `targets` and `process_cx` are given.
pub(crate) fn settle_batch<M, St: Settler<M>>(
    settler: &St,
    instrumentation: &Instrumentation,
    receipts: Vec<St::Receipt>,
    settlement: Settlement,
    targets: Vec<Option<SettleTarget>>,
    process_cx: Option<Context>,
) -> impl Future<Output = Result<(), SettleFailure>> + Send + 'static {
    let operation = settler.operation(settlement);
    let spans: Vec<SettleSpan> = match (operation, process_cx) {
        (Some(operation), Some(parent)) => targets
            .into_iter()
            .flatten()
            .map(|target| target.span(instrumentation, operation, &parent))
            .collect(),
        _ => Vec::new(),
    };
    let call = settler.settle_all(
        receipts
            .into_iter()
            .map(|receipt| (receipt, settlement))
            .collect(),
    );
    async move {
        let results = call.await;
        let mut spans = spans.into_iter();
        let mut failure = None;
        for result in results {
            let span = spans.next();
            match result {
                Ok(()) => {
                    if let Some(span) = span {
                        span.end();
                    }
                }
                Err(error) => {
                    if let Some(span) = span {
                        span.fail(error.error_type());
                    }
                    if failure.is_none() {
                        failure = Some(SettleFailure::new(operation.unwrap_or("settle"), error));
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// A settlement due: the message's receipt, how to settle it, and what its settle span needs.
pub(crate) type Due<R> = (R, Settlement, Option<SettleTarget>, Option<Context>);

/// Settles messages whose handlers finished in the same turn, in one `settle_all` call, each
/// in its own settle span (child of its `process` span) when its target and context are given.
pub(crate) fn settle_each<M, St: Settler<M>>(
    settler: &St,
    instrumentation: &Instrumentation,
    items: Vec<Due<St::Receipt>>,
) -> impl Future<Output = Result<(), SettleFailure>> + Send + 'static {
    let mut calls = Vec::with_capacity(items.len());
    let mut spans = Vec::with_capacity(items.len());
    for (receipt, settlement, target, process_cx) in items {
        let operation = settler.operation(settlement);
        let span = match (operation, target, process_cx) {
            (Some(operation), Some(target), Some(parent)) => {
                Some(target.span(instrumentation, operation, &parent))
            }
            _ => None,
        };
        spans.push((operation, span));
        calls.push((receipt, settlement));
    }
    let call = settler.settle_all(calls);
    async move {
        let results = call.await;
        let mut failure = None;
        for (result, (operation, span)) in results.into_iter().zip(spans) {
            match result {
                Ok(()) => {
                    if let Some(span) = span {
                        span.end();
                    }
                }
                Err(error) => {
                    if let Some(span) = span {
                        span.fail(error.error_type());
                    }
                    if failure.is_none() {
                        failure = Some(SettleFailure::new(operation.unwrap_or("settle"), error));
                    }
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Gives back messages received but never handled ([`Settlement::Release`]), without spans.
pub(crate) fn release<M, St: Settler<M>>(
    settler: &St,
    messages: Vec<M>,
) -> impl Future<Output = Result<(), SettleFailure>> + Send + 'static {
    let operation = settler.operation(Settlement::Release).unwrap_or("release");
    let call = settler.settle_all(
        messages
            .iter()
            .map(|message| (settler.receipt(message), Settlement::Release))
            .collect(),
    );
    drop(messages);
    async move {
        match call.await.into_iter().find_map(Result::err) {
            None => Ok(()),
            Some(error) => Err(SettleFailure::new(operation, error)),
        }
    }
}
