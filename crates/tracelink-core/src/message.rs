//! What the core needs to know about a broker's messages; each adapter implements these traits
//! for its client's types.

use std::borrow::Cow;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::KeyValue;

use crate::carrier::{CopyingInjector, StrInjector};

/// The messaging system a layer talks to, and the connection it uses.
///
/// `name` is the `messaging.system` value (`kafka`, `rabbitmq`, `aws_sqs`, `nats`, ...). The
/// server and client fields become `server.address`, `server.port` and `messaging.client.id`.
#[derive(Debug, Clone)]
pub struct MessagingSystem {
    pub(crate) name: Cow<'static, str>,
    pub(crate) publish_operation: &'static str,
    pub(crate) server_address: Option<String>,
    pub(crate) server_port: Option<u16>,
    pub(crate) client_id: Option<String>,
}

impl MessagingSystem {
    /// A system with the given `messaging.system` value; publishes are named `send`.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            publish_operation: "send",
            server_address: None,
            server_port: None,
            client_id: None,
        }
    }

    /// Names publish operations `name` instead of `send` (RabbitMQ and NATS say `publish`).
    pub fn with_publish_operation(mut self, name: &'static str) -> Self {
        self.publish_operation = name;
        self
    }

    /// Sets `server.address` and, when known, `server.port`.
    pub fn with_server(mut self, address: impl Into<String>, port: Option<u16>) -> Self {
        self.server_address = Some(address.into());
        self.server_port = port;
        self
    }

    /// Sets `messaging.client.id`.
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The `messaging.system` value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `server.address`, when known.
    pub fn server_address(&self) -> Option<&str> {
        self.server_address.as_deref()
    }

    /// `server.port`, when known.
    pub fn server_port(&self) -> Option<u16> {
        self.server_port
    }

    /// `messaging.client.id`, when known.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The operation name used for publishes (`send` or `publish`).
    pub fn publish_operation(&self) -> &'static str {
        self.publish_operation
    }
}

/// The host and port of the first server in a broker address: a URL
/// (`nats://user:pass@host:4222`, `http://127.0.0.1:5000/`), a bare `host:port`, a
/// comma-separated list of either (Kafka bootstrap servers, NATS server lists), IPv6 in
/// brackets. Credentials, paths and queries are left out, so the result is safe for
/// `server.address`; the port is `None` when absent or not a number.
///
/// ```
/// use tracelink_core::server_from_url;
/// assert_eq!(server_from_url("nats://u:p@nats.example:4222"), Some(("nats.example", Some(4222))));
/// assert_eq!(server_from_url("PLAINTEXT://kafka:29092,b:1"), Some(("kafka", Some(29092))));
/// assert_eq!(server_from_url("http://[::1]:4566/x"), Some(("::1", Some(4566))));
/// assert_eq!(server_from_url("https://sqs.eu-west-1.amazonaws.com/"), Some(("sqs.eu-west-1.amazonaws.com", None)));
/// ```
pub fn server_from_url(url: &str) -> Option<(&str, Option<u16>)> {
    let first = url.split(',').map(str::trim).find(|s| !s.is_empty())?;
    let rest = first.split_once("://").map_or(first, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if authority.is_empty() {
        return None;
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok())),
        None => Some((authority, None)),
    }
}

/// Where a message goes or came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Destination<'a> {
    /// `messaging.destination.name`: topic, queue, subject, `{exchange}:{routing key}`, ...
    pub name: &'a str,
    /// `messaging.destination.template`: a low-cardinality name for per-user or per-request
    /// destinations (`_INBOX.*`); used in span names instead of `name` when set.
    pub template: Option<&'a str>,
    /// `messaging.destination.temporary`: the destination lives only as long as its client
    /// (reply inboxes, exclusive queues). Its name is left out of span names.
    pub temporary: bool,
    /// `messaging.destination.anonymous`: the broker named the destination.
    pub anonymous: bool,
}

impl<'a> Destination<'a> {
    /// A named, permanent destination.
    pub fn new(name: &'a str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    /// Sets the destination template.
    pub fn with_template(mut self, template: &'a str) -> Self {
        self.template = Some(template);
        self
    }

    /// Marks the destination temporary.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Marks the destination anonymous.
    pub fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }
}

/// A message about to be published.
///
/// The core calls [`with_headers_mut`](OutgoingMessage::with_headers_mut) (or
/// [`with_str_injector`](OutgoingMessage::with_str_injector)) once to inject the producer span's
/// context; the adapter hands over an [`Injector`] over the message's headers that replaces keys
/// already present.
pub trait OutgoingMessage {
    /// Where the message goes.
    fn destination(&self) -> Destination<'_>;

    /// Calls `f` with an injector over the message's headers.
    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector));

    /// Calls `f` with a [`StrInjector`] over the message's headers: what the core uses instead
    /// of [`with_headers_mut`](OutgoingMessage::with_headers_mut) when the installed propagator
    /// is tracelink's [`W3cTraceContextPropagator`], which hands `traceparent` over borrowed.
    ///
    /// The default lends `with_headers_mut`'s injector through [`CopyingInjector`], which copies
    /// the value into a `String`. Override it when the client copies header bytes itself, so
    /// that injecting allocates nothing.
    ///
    /// [`W3cTraceContextPropagator`]: crate::propagation::W3cTraceContextPropagator
    fn with_str_injector(&mut self, f: &mut dyn FnMut(&mut dyn StrInjector)) {
        self.with_headers_mut(&mut |injector| f(&mut CopyingInjector(injector)));
    }

    /// `messaging.message.id`, when the application set one.
    fn message_id(&self) -> Option<&str> {
        None
    }

    /// `messaging.message.conversation_id` (correlation id).
    fn conversation_id(&self) -> Option<&str> {
        None
    }

    /// `messaging.message.body.size` in bytes.
    fn body_size(&self) -> Option<usize> {
        None
    }

    /// `messaging.destination.partition.id`, when the application chose the partition.
    fn partition_id(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// Pushes system-specific attributes (`messaging.kafka.message.key`, ...).
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        let _ = attributes;
    }
}

/// A message received from a broker.
pub trait IncomingMessage {
    /// Where the message came from.
    fn destination(&self) -> Destination<'_>;

    /// Calls `f` with an extractor over the message's headers. It must follow the rules in
    /// [`carrier`](crate::carrier): never panic, non-text values and conflicting duplicates read
    /// as absent.
    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor));

    /// `messaging.message.id`.
    fn message_id(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// `messaging.message.conversation_id`.
    fn conversation_id(&self) -> Option<&str> {
        None
    }

    /// `messaging.message.body.size` in bytes.
    fn body_size(&self) -> Option<usize> {
        None
    }

    /// `messaging.destination.partition.id`.
    fn partition_id(&self) -> Option<Cow<'_, str>> {
        None
    }

    /// `messaging.consumer.group.name` (Kafka group, NATS queue group, ...).
    fn consumer_group(&self) -> Option<&str> {
        None
    }

    /// `messaging.destination.subscription.name` (JetStream consumer, ...).
    fn subscription_name(&self) -> Option<&str> {
        None
    }

    /// Pushes system-specific attributes (`messaging.kafka.offset`, delivery tag, ...).
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        let _ = attributes;
    }
}

/// What a publish response tells about the published message; implemented by adapters for their
/// client's acknowledgement types. The attributes are set on the producer span when the publish
/// succeeded.
pub trait PublishResponse {
    /// Pushes attributes known only after the broker answered (message id, partition, offset).
    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        let _ = attributes;
    }
}

impl PublishResponse for () {}

/// The response to a batch publish, entry by entry.
pub trait BatchPublishResponse {
    /// The outcome of entry `index` (in request order): `Ok` with attributes pushed for its
    /// `create` span, or `Err` with the entry's `error.type`.
    fn entry(&self, index: usize, attributes: &mut Vec<KeyValue>) -> Result<(), Cow<'static, str>>;
}

impl<T: PublishResponse, E: crate::ErrorType> BatchPublishResponse for Vec<Result<T, E>> {
    fn entry(&self, index: usize, attributes: &mut Vec<KeyValue>) -> Result<(), Cow<'static, str>> {
        match self.get(index) {
            Some(Ok(response)) => {
                response.attributes(attributes);
                Ok(())
            }
            Some(Err(err)) => Err(err.error_type()),
            None => Ok(()),
        }
    }
}
