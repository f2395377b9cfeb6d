//! The receive side: a long-polled `ReceiveMessage` as the core consumer's [`Source`].

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use aws_sdk_sqs::Client;
use tracelink_core::{Destination, Instrumentation, Received, Source};

use crate::error::SqsError;
use crate::message::{Queue, ReceivedMessage};
use crate::settle::SqsSettler;

/// `MessageAttributeNames` values that already return every attribute.
const ALL_ATTRIBUTES: [&str; 2] = ["All", ".*"];

/// SQS's limits on `MaxNumberOfMessages`, `WaitTimeSeconds` and visibility timeouts.
const MAX_RECEIVE: i32 = 10;
const MAX_WAIT_SECONDS: u64 = 20;
pub(crate) const MAX_VISIBILITY_SECONDS: u64 = 43_200;

/// A traced SQS consumer: the core's [`Consumer`](tracelink_core::Consumer) over an
/// [`SqsSource`].
///
/// ```no_run
/// # async fn demo(client: aws_sdk_sqs::Client, url: String, instrumentation: tracelink_core::Instrumentation)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use std::convert::Infallible;
/// use tower::service_fn;
/// use tracelink_sqs::{ReceivedMessage, SqsConsumer, SqsSource};
///
/// let handler = service_fn(|message: ReceivedMessage| async move {
///     println!("{}", message.body());
///     Ok::<_, Infallible>(())
/// });
/// SqsConsumer::new(SqsSource::new(client, url), instrumentation)
///     .with_concurrency(4)
///     .run(handler, tokio::signal::ctrl_c())
///     .await?;
/// # Ok(()) }
/// ```
pub type SqsConsumer<C = tracelink_core::DefaultErrorType> = tracelink_core::Consumer<SqsSource, C>;

/// An SQS queue as the source of an [`SqsConsumer`]: each receive is one long-polled
/// `ReceiveMessage` for at most 10 messages.
///
/// Every receive asks for the propagator's fields as message attributes and for the
/// `AWSTraceHeader` system attribute on top of the names you give (your `All` stays `All`), and
/// on a FIFO queue (name ending in `.fifo`) for `MessageGroupId`: messages of one group are
/// handled one after the other, those of different groups side by side.
///
/// When the consumer stops, a long poll in progress is dropped: messages SQS handed to it
/// after that are not lost, they come back when their visibility timeout expires (a shorter
/// [`with_wait_time`](SqsSource::with_wait_time) narrows that window). Messages received but
/// not yet handled are made visible again at once.
#[derive(Debug, Clone)]
pub struct SqsSource {
    client: Client,
    queue: Arc<Queue>,
    max_messages: i32,
    wait_time_seconds: i32,
    visibility_timeout: Option<i32>,
    user_attribute_names: Vec<String>,
    user_system_attribute_names: Vec<MessageSystemAttributeName>,
    attribute_names: Vec<String>,
    system_attribute_names: Vec<MessageSystemAttributeName>,
    /// The consumer's, from [`Source::bind`]; until then one over the global propagator.
    instrumentation: Option<Instrumentation>,
    fifo: bool,
}

impl SqsSource {
    /// The queue at `queue_url`, received through `client`: up to 10 messages per receive,
    /// 20-second long polls, the queue's visibility timeout.
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let queue = Queue::new(queue_url.into());
        let fifo = queue.name().ends_with(".fifo");
        let mut source = Self {
            client,
            queue,
            max_messages: MAX_RECEIVE,
            wait_time_seconds: MAX_WAIT_SECONDS as i32,
            visibility_timeout: None,
            user_attribute_names: Vec::new(),
            user_system_attribute_names: Vec::new(),
            attribute_names: Vec::new(),
            system_attribute_names: Vec::new(),
            instrumentation: None,
            fifo,
        };
        source.refresh_names();
        source
    }

    /// `MaxNumberOfMessages` per receive, 1 to 10 (default 10). The consumer asks for fewer
    /// when its prefetch leaves room for fewer.
    pub fn with_max_messages(mut self, n: usize) -> Self {
        self.max_messages = n.clamp(1, MAX_RECEIVE as usize) as i32;
        self
    }

    /// `WaitTimeSeconds` of the long poll, 0 to 20 (default 20).
    pub fn with_wait_time(mut self, wait: Duration) -> Self {
        self.wait_time_seconds = wait.as_secs().min(MAX_WAIT_SECONDS) as i32;
        self
    }

    /// `VisibilityTimeout` of received messages (default: the queue's).
    pub fn with_visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout.as_secs().min(MAX_VISIBILITY_SECONDS) as i32);
        self
    }

    /// `MessageAttributeNames` your handler needs. The propagator's fields are always requested
    /// as well (unless you ask for `All` or `.*`, which include them).
    pub fn with_message_attribute_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.user_attribute_names = names.into_iter().map(Into::into).collect();
        self.refresh_names();
        self
    }

    /// `MessageSystemAttributeNames` your handler needs. `AWSTraceHeader` is always requested as
    /// well (and `MessageGroupId` on FIFO queues).
    pub fn with_system_attribute_names<I>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = MessageSystemAttributeName>,
    {
        self.user_system_attribute_names = names.into_iter().collect();
        self.refresh_names();
        self
    }

    /// The SQS client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue URL.
    pub fn queue_url(&self) -> &str {
        &self.queue.url
    }

    /// The `MessageAttributeNames` every receive asks for.
    pub fn message_attribute_names(&self) -> &[String] {
        &self.attribute_names
    }

    /// The `MessageSystemAttributeNames` every receive asks for.
    pub fn system_attribute_names(&self) -> &[MessageSystemAttributeName] {
        &self.system_attribute_names
    }

    fn refresh_names(&mut self) {
        let fields = match &self.instrumentation {
            Some(instrumentation) => instrumentation.fields(),
            None => opentelemetry::global::get_text_map_propagator(|p| {
                p.fields().map(str::to_owned).collect()
            }),
        };
        self.attribute_names = message_attribute_names(&self.user_attribute_names, &sorted(fields));
        self.system_attribute_names =
            system_attribute_names(&self.user_system_attribute_names, self.fifo);
    }
}

impl Source for SqsSource {
    type Message = ReceivedMessage;
    type Error = SqsError;
    type Settler = SqsSettler;

    fn settler(&self) -> SqsSettler {
        SqsSettler::new(self.client.clone(), self.queue.clone())
    }

    fn bind(&mut self, instrumentation: &Instrumentation) {
        self.instrumentation = Some(instrumentation.clone());
        self.refresh_names();
    }

    async fn receive(self, max: usize) -> (Self, Result<Received<ReceivedMessage>, SqsError>) {
        let max = (max.min(MAX_RECEIVE as usize) as i32).clamp(1, self.max_messages);
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue.url)
            .max_number_of_messages(max)
            .wait_time_seconds(self.wait_time_seconds)
            .set_visibility_timeout(self.visibility_timeout)
            .set_message_attribute_names(Some(self.attribute_names.clone()))
            .set_message_system_attribute_names(Some(self.system_attribute_names.clone()))
            .send()
            .await;
        let result = match output {
            Ok(output) => {
                let fallback;
                let instrumentation = match &self.instrumentation {
                    Some(instrumentation) => instrumentation,
                    None => {
                        fallback = Instrumentation::new(crate::messaging_system(None, None));
                        &fallback
                    }
                };
                Ok(Received::Batch(
                    output
                        .messages
                        .unwrap_or_default()
                        .into_iter()
                        .map(|m| {
                            ReceivedMessage::with_queue(m, self.queue.clone(), instrumentation)
                        })
                        .collect(),
                ))
            }
            Err(error) => Err(SqsError::sdk("ReceiveMessage", error)),
        };
        (self, result)
    }

    fn destination(&self) -> Option<Destination<'_>> {
        Some(Destination::new(self.queue.name()))
    }

    fn ordering_key(&self, message: &ReceivedMessage) -> Option<u64> {
        if !self.fifo {
            return None;
        }
        // SQS holds back a FIFO group while one of its messages is in flight, so its messages
        // are handled one after the other; a message without a group id (there should be none)
        // shares the empty group.
        let group = message
            .system_attribute(&MessageSystemAttributeName::MessageGroupId)
            .unwrap_or_default();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        group.hash(&mut hasher);
        Some(hasher.finish())
    }

    fn default_prefetch(&self) -> usize {
        MAX_RECEIVE as usize
    }

    fn receive_spans_by_default(&self) -> bool {
        true
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names.dedup();
    names
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

/// The system attribute names to request: the user's, plus `AWSTraceHeader` (and
/// `MessageGroupId` on a FIFO queue) unless already there or `All`.
pub(crate) fn system_attribute_names(
    user: &[MessageSystemAttributeName],
    fifo: bool,
) -> Vec<MessageSystemAttributeName> {
    let mut names = user.to_vec();
    if names.contains(&MessageSystemAttributeName::All) {
        return names;
    }
    let mut needed = vec![MessageSystemAttributeName::AwsTraceHeader];
    if fifo {
        needed.push(MessageSystemAttributeName::MessageGroupId);
    }
    for name in needed {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
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
            system_attribute_names(&[MessageSystemAttributeName::All], true),
            vec![MessageSystemAttributeName::All]
        );
        assert_eq!(
            system_attribute_names(&[MessageSystemAttributeName::SentTimestamp], false),
            vec![
                MessageSystemAttributeName::SentTimestamp,
                MessageSystemAttributeName::AwsTraceHeader
            ]
        );
        assert_eq!(
            system_attribute_names(&[MessageSystemAttributeName::AwsTraceHeader], true),
            vec![
                MessageSystemAttributeName::AwsTraceHeader,
                MessageSystemAttributeName::MessageGroupId
            ]
        );
    }

    fn source(url: &str) -> SqsSource {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .build();
        SqsSource::new(Client::from_conf(config), url)
    }

    #[test]
    fn bound_source_asks_for_the_fields_of_a_w3c_propagator() {
        use opentelemetry::propagation::TextMapCompositePropagator;
        use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
        let instrumentation =
            Instrumentation::builder(tracelink_core::MessagingSystem::new("aws_sqs"))
                .with_propagator(TextMapCompositePropagator::new(vec![
                    Box::new(TraceContextPropagator::new()),
                    Box::new(BaggagePropagator::new()),
                ]))
                .build();
        let mut source = source("http://h/1/jobs").with_message_attribute_names(["tenant"]);
        source.bind(&instrumentation);
        assert_eq!(
            source.message_attribute_names(),
            strings(&["tenant", "baggage", "traceparent", "tracestate"])
        );
        assert_eq!(
            source.destination().map(|d| d.name),
            Some("jobs"),
            "receive spans are named after the queue"
        );
    }

    #[test]
    fn fifo_queues_order_by_message_group() {
        use aws_sdk_sqs::types::Message;
        let fifo = source("http://h/1/jobs.fifo");
        let standard = source("http://h/1/jobs");
        let instrumentation = Instrumentation::new(tracelink_core::MessagingSystem::new("aws_sqs"));
        let message = |group: &str| {
            let message = Message::builder()
                .attributes(MessageSystemAttributeName::MessageGroupId, group)
                .build();
            ReceivedMessage::new(message, "http://h/1/jobs.fifo", &instrumentation)
        };
        let (a, a2, b) = (message("a"), message("a"), message("b"));
        assert!(fifo.ordering_key(&a).is_some());
        assert_eq!(fifo.ordering_key(&a), fifo.ordering_key(&a2));
        assert_ne!(fifo.ordering_key(&a), fifo.ordering_key(&b));
        assert_eq!(standard.ordering_key(&a), None);
        assert_eq!(fifo.default_prefetch(), 10);
        assert!(fifo.receive_spans_by_default());
    }
}
