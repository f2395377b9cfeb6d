//! The receive loop: long-poll, a CLIENT `receive` span, a `process` span per message, delete
//! after success.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName,
};
use aws_sdk_sqs::Client;
use futures_util::future::join_all;
use tower::{Layer, Service, ServiceExt};
use tracelink_core::{
    ClassifyError, ConsumerLayer, ConsumerService, DefaultErrorType, Destination, ErrorType,
    Instrumentation,
};

use crate::error::{EntryError, SqsError};
use crate::message::{Queue, ReceivedMessage};

/// `MessageAttributeNames` values that already return every attribute.
const ALL_ATTRIBUTES: [&str; 2] = ["All", ".*"];

/// What happens to a message whose handler failed. Either way it is not deleted, so SQS
/// delivers it again, and after `maxReceiveCount` receives a redrive policy moves it to the
/// dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Leave it invisible until the queue's (or the receive's) visibility timeout expires
    /// (default).
    #[default]
    WaitForVisibilityTimeout,
    /// Set its visibility timeout to this (whole seconds; zero redelivers at once) with
    /// `ChangeMessageVisibilityBatch`.
    ChangeVisibility(Duration),
}

/// The message attribute names to request: the user's, plus the propagator's fields unless the
/// user already asks for all of them.
pub(crate) fn message_attribute_names(user: &[String], fields: &[String]) -> Vec<String> {
    let mut names = user.to_vec();
    if names.iter().any(|n| ALL_ATTRIBUTES.contains(&n.as_str())) {
        return names;
    }
    for field in fields {
        if !names.iter().any(|n| n == field) {
            names.push(field.clone());
        }
    }
    names
}

/// The system attribute names to request: the user's, plus `AWSTraceHeader` unless already
/// there or `All`.
pub(crate) fn system_attribute_names(
    user: &[MessageSystemAttributeName],
) -> Vec<MessageSystemAttributeName> {
    let mut names = user.to_vec();
    if !names.iter().any(|n| {
        matches!(
            n,
            MessageSystemAttributeName::All | MessageSystemAttributeName::AwsTraceHeader
        )
    }) {
        names.push(MessageSystemAttributeName::AwsTraceHeader);
    }
    names
}

/// The names the propagator reads and writes (its `fields()`), sorted.
pub(crate) fn propagator_fields(instrumentation: &Instrumentation) -> Vec<String> {
    let mut names = instrumentation.fields();
    names.sort();
    names.dedup();
    names
}

/// What became of one received message.
enum Handled {
    Ok,
    Failed,
    Skipped,
}

/// What one [`poll`](SqsConsumer::poll) did.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Messages received.
    pub received: usize,
    /// Messages whose handler succeeded and that were deleted.
    pub deleted: usize,
    /// Messages whose handler failed (left for redelivery).
    pub failed: usize,
    /// Messages of a FIFO queue not handled because an earlier one failed (left for
    /// redelivery, in order).
    pub skipped: usize,
    /// Entries SQS refused to delete or change the visibility of.
    pub settle_errors: Vec<EntryError>,
}

/// Builds an [`SqsConsumer`].
#[derive(Debug)]
pub struct SqsConsumerBuilder<C = DefaultErrorType> {
    client: Client,
    queue_url: String,
    instrumentation: Instrumentation,
    classify: C,
    max_messages: i32,
    wait_time_seconds: i32,
    visibility_timeout: Option<i32>,
    attribute_names: Vec<String>,
    system_attribute_names: Vec<MessageSystemAttributeName>,
    on_failure: OnFailure,
}

impl SqsConsumerBuilder {
    fn new(client: Client, queue_url: String, instrumentation: Instrumentation) -> Self {
        Self {
            client,
            queue_url,
            instrumentation,
            classify: DefaultErrorType,
            max_messages: 10,
            wait_time_seconds: 20,
            visibility_timeout: None,
            attribute_names: Vec::new(),
            system_attribute_names: Vec::new(),
            on_failure: OnFailure::default(),
        }
    }
}

impl<C> SqsConsumerBuilder<C> {
    /// `MaxNumberOfMessages` per receive, 1 to 10 (default 10).
    pub fn with_max_messages(mut self, n: i32) -> Self {
        self.max_messages = n.clamp(1, 10);
        self
    }

    /// `WaitTimeSeconds` of the long poll, 0 to 20 (default 20).
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait_time_seconds = wait.as_secs().min(20) as i32;
        self
    }

    /// `VisibilityTimeout` of received messages (default: the queue's).
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout.as_secs().min(43_200) as i32);
        self
    }

    /// `MessageAttributeNames` your handler needs. The propagator's fields are always requested
    /// as well (unless you ask for `All` or `.*`, which include them).
    pub fn with_message_attribute_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.attribute_names = names.into_iter().map(Into::into).collect();
        self
    }

    /// `MessageSystemAttributeNames` your handler needs. `AWSTraceHeader` is always requested as
    /// well.
    pub fn with_system_attribute_names<I>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = MessageSystemAttributeName>,
    {
        self.system_attribute_names = names.into_iter().collect();
        self
    }

    /// What happens to messages whose handler failed (default
    /// [`OnFailure::WaitForVisibilityTimeout`]).
    pub fn on_failure(mut self, policy: OnFailure) -> Self {
        self.on_failure = policy;
        self
    }

    /// Classifies handler errors as `error.type` with `classify` (see
    /// [`ConsumerLayer::with_error_type`]).
    pub fn with_error_type<C2>(self, classify: C2) -> SqsConsumerBuilder<C2> {
        SqsConsumerBuilder {
            client: self.client,
            queue_url: self.queue_url,
            instrumentation: self.instrumentation,
            classify,
            max_messages: self.max_messages,
            wait_time_seconds: self.wait_time_seconds,
            visibility_timeout: self.visibility_timeout,
            attribute_names: self.attribute_names,
            system_attribute_names: self.system_attribute_names,
            on_failure: self.on_failure,
        }
    }

    /// A consumer running `handler` inside the core's [`ConsumerLayer`].
    pub fn build<S>(self, handler: S) -> SqsConsumer<S, C>
    where
        C: Clone,
    {
        let fields = propagator_fields(&self.instrumentation);
        let handler = ConsumerLayer::from(self.instrumentation.clone())
            .with_error_type(self.classify)
            .layer(handler);
        SqsConsumer {
            client: self.client,
            queue: Queue::new(self.queue_url),
            instrumentation: self.instrumentation,
            handler,
            max_messages: self.max_messages,
            wait_time_seconds: self.wait_time_seconds,
            visibility_timeout: self.visibility_timeout,
            attribute_names: message_attribute_names(&self.attribute_names, &fields),
            system_attribute_names: system_attribute_names(&self.system_attribute_names),
            on_failure: self.on_failure,
        }
    }
}

/// A traced SQS consumer: long-polls `ReceiveMessage`, records a CLIENT `receive {queue}` span
/// per non-empty receive (one link per message), runs the handler for each message inside a
/// CONSUMER `process {queue}` span linked to the message's creation context, deletes the
/// messages whose handler succeeded (`DeleteMessageBatch`) and leaves the others to SQS's
/// redelivery per [`OnFailure`].
///
/// The messages of one receive are handled concurrently; on a FIFO queue (name ending in
/// `.fifo`) one after the other, and after a failure the rest of the receive is left for
/// redelivery, so order within a message group holds. The next receive starts when all of them
/// are settled.
#[derive(Debug)]
pub struct SqsConsumer<S, C = DefaultErrorType> {
    client: Client,
    queue: Arc<Queue>,
    instrumentation: Instrumentation,
    handler: ConsumerService<S, C>,
    max_messages: i32,
    wait_time_seconds: i32,
    visibility_timeout: Option<i32>,
    attribute_names: Vec<String>,
    system_attribute_names: Vec<MessageSystemAttributeName>,
    on_failure: OnFailure,
}

impl SqsConsumer<(), DefaultErrorType> {
    /// Starts a consumer of the queue at `queue_url`.
    pub fn builder(
        client: Client,
        queue_url: impl Into<String>,
        instrumentation: Instrumentation,
    ) -> SqsConsumerBuilder {
        SqsConsumerBuilder::new(client, queue_url.into(), instrumentation)
    }
}

impl<S, C> SqsConsumer<S, C>
where
    S: Service<ReceivedMessage>,
    C: ClassifyError<S::Error> + Clone,
{
    /// Changes `MaxNumberOfMessages` (1 to 10) for the next receives, e.g. to stop after an
    /// exact number of messages.
    pub fn set_max_messages(&mut self, n: i32) {
        self.max_messages = n.clamp(1, 10);
    }

    /// The `MessageAttributeNames` every receive asks for.
    pub fn message_attribute_names(&self) -> &[String] {
        &self.attribute_names
    }

    /// The `MessageSystemAttributeNames` every receive asks for.
    pub fn system_attribute_names(&self) -> &[MessageSystemAttributeName] {
        &self.system_attribute_names
    }

    /// One long poll: receives up to `max_messages`, handles them and settles them. An empty
    /// receive records no span.
    pub async fn poll(&mut self) -> Result<PollOutcome, SqsError> {
        let started = SystemTime::now();
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(self.max_messages)
            .wait_time_seconds(self.wait_time_seconds)
            .set_visibility_timeout(self.visibility_timeout)
            .set_message_attribute_names(Some(self.attribute_names.clone()))
            .set_message_system_attribute_names(Some(self.system_attribute_names.clone()))
            .send()
            .await
            .map_err(|e| {
                let error = SqsError::sdk("ReceiveMessage", e);
                self.instrumentation.receive_failed(
                    Destination::new(self.queue.name()),
                    started,
                    error.error_type(),
                );
                error
            })?;
        let messages: Vec<ReceivedMessage> = output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| ReceivedMessage::with_queue(m, self.queue.clone(), &self.instrumentation))
            .collect();
        let mut outcome = PollOutcome {
            received: messages.len(),
            ..PollOutcome::default()
        };
        if let Some(span) = self.instrumentation.receive_span(
            Destination::new(self.queue.name()),
            started,
            &messages,
        ) {
            span.end();
        }
        if messages.is_empty() {
            return Ok(outcome);
        }

        let handles: Vec<Option<String>> = messages
            .iter()
            .map(|m| m.receipt_handle().map(str::to_owned))
            .collect();
        let results = if self.queue.name().ends_with(".fifo") {
            self.handle_in_order(messages).await
        } else {
            self.handle_concurrently(messages).await
        };

        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (handle, result) in handles.into_iter().zip(results) {
            let Some(handle) = handle else { continue };
            match result {
                Handled::Ok => done.push(handle),
                Handled::Failed => failed.push(handle),
                Handled::Skipped => {
                    outcome.skipped += 1;
                    failed.push(handle);
                }
            }
        }
        outcome.failed = failed.len() - outcome.skipped;
        outcome.deleted = done.len();
        if !done.is_empty() {
            let errors = self.delete(done).await?;
            outcome.deleted -= errors.len();
            outcome.settle_errors.extend(errors);
        }
        if let (OnFailure::ChangeVisibility(timeout), false) = (self.on_failure, failed.is_empty())
        {
            let errors = self.change_visibility(failed, timeout).await?;
            outcome.settle_errors.extend(errors);
        }
        Ok(outcome)
    }

    /// Handles the messages of one receive concurrently.
    async fn handle_concurrently(&mut self, messages: Vec<ReceivedMessage>) -> Vec<Handled> {
        let mut calls = Vec::with_capacity(messages.len());
        for message in messages {
            match self.handler.ready().await {
                Ok(handler) => calls.push(Some(handler.call(message))),
                Err(_) => calls.push(None),
            }
        }
        join_all(calls.into_iter().map(|call| async move {
            match call {
                Some(call) => match call.await {
                    Ok(_) => Handled::Ok,
                    Err(_) => Handled::Failed,
                },
                None => Handled::Failed,
            }
        }))
        .await
    }

    /// Handles the messages of a FIFO queue one after the other; after a failure the rest are
    /// not handled (nor deleted), so no message overtakes one that will be redelivered.
    async fn handle_in_order(&mut self, messages: Vec<ReceivedMessage>) -> Vec<Handled> {
        let mut results = Vec::with_capacity(messages.len());
        let mut failed = false;
        for message in messages {
            if failed {
                results.push(Handled::Skipped);
                continue;
            }
            let ok = match self.handler.ready().await {
                Ok(handler) => handler.call(message).await.is_ok(),
                Err(_) => false,
            };
            failed = !ok;
            results.push(if ok { Handled::Ok } else { Handled::Failed });
        }
        results
    }

    /// Polls until a receive or settle call fails.
    pub async fn run(&mut self) -> Result<Infallible, SqsError> {
        loop {
            self.poll().await?;
        }
    }

    async fn delete(&self, handles: Vec<String>) -> Result<Vec<EntryError>, SqsError> {
        let entries = handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .build()
                    .ok()
            })
            .collect();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| SqsError::sdk("DeleteMessageBatch", e))?;
        Ok(settle_errors("delete", output.failed()))
    }

    async fn change_visibility(
        &self,
        handles: Vec<String>,
        timeout: Duration,
    ) -> Result<Vec<EntryError>, SqsError> {
        let seconds = timeout.as_secs().min(43_200) as i32;
        let entries = handles
            .into_iter()
            .enumerate()
            .filter_map(|(i, handle)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(seconds)
                    .build()
                    .ok()
            })
            .collect();
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| SqsError::sdk("ChangeMessageVisibilityBatch", e))?;
        Ok(settle_errors("change visibility", output.failed()))
    }
}

fn settle_errors(
    what: &str,
    failed: &[aws_sdk_sqs::types::BatchResultErrorEntry],
) -> Vec<EntryError> {
    failed
        .iter()
        .map(|entry| {
            let error = EntryError::from(entry);
            tracing::warn!(code = %error.code, "SQS refused to {what} a message");
            error
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn propagator_fields_are_added_to_the_users_names() {
        let fields = strings(&["baggage", "traceparent", "tracestate"]);
        assert_eq!(message_attribute_names(&[], &fields), fields);
        assert_eq!(
            message_attribute_names(&strings(&["tenant", "traceparent"]), &fields),
            strings(&["tenant", "traceparent", "baggage", "tracestate"])
        );
    }

    #[test]
    fn all_is_left_alone() {
        let fields = strings(&["traceparent"]);
        assert_eq!(
            message_attribute_names(&strings(&["All"]), &fields),
            strings(&["All"])
        );
        assert_eq!(
            message_attribute_names(&strings(&[".*"]), &fields),
            strings(&[".*"])
        );
        assert_eq!(
            system_attribute_names(&[MessageSystemAttributeName::All]),
            vec![MessageSystemAttributeName::All]
        );
        assert_eq!(
            system_attribute_names(&[MessageSystemAttributeName::SentTimestamp]),
            vec![
                MessageSystemAttributeName::SentTimestamp,
                MessageSystemAttributeName::AwsTraceHeader
            ]
        );
    }

    #[test]
    fn fields_of_a_w3c_propagator() {
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        let instrumentation =
            Instrumentation::builder(tracelink_core::MessagingSystem::new("aws_sqs"))
                .with_propagator(TextMapCompositePropagator::new(vec![
                    Box::new(TraceContextPropagator::new()),
                    Box::new(BaggagePropagator::new()),
                ]))
                .build();
        assert_eq!(
            propagator_fields(&instrumentation),
            strings(&["baggage", "traceparent", "tracestate"])
        );
    }
}
