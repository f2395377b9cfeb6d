//! The messages tracelink sees: an outgoing [`Publish`] and an incoming [`AmqpDelivery`].

use std::borrow::Cow;
use std::sync::Arc;

use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute as attr;
use tracelink_core::{Destination, IncomingMessage, OutgoingMessage};

use crate::carrier::{FieldTableExtractor, FieldTableInjector};

/// `messaging.destination.name` of the default exchange when nothing else names the destination
/// (semantic conventions for RabbitMQ).
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// Joins the non-empty parts with `:`; [`DEFAULT_EXCHANGE`] when every part is empty.
fn join(parts: &[&str]) -> String {
    let mut name = String::new();
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !name.is_empty() {
            name.push(':');
        }
        name.push_str(part);
    }
    if name.is_empty() {
        name.push_str(DEFAULT_EXCHANGE);
    }
    name
}

/// The producer-side destination name: `{exchange}:{routing key}`, either part alone when the
/// other is empty, [`DEFAULT_EXCHANGE`] when both are.
pub fn publish_destination(exchange: &str, routing_key: &str) -> String {
    join(&[exchange, routing_key])
}

/// The consumer-side destination name: `{exchange}:{routing key}:{queue}`, leaving out empty
/// parts, [`DEFAULT_EXCHANGE`] when all are empty.
pub fn delivery_destination(exchange: &str, routing_key: &str, queue: &str) -> String {
    join(&[exchange, routing_key, queue])
}

fn routing_key_attribute(routing_key: &ShortString, attributes: &mut Vec<KeyValue>) {
    if !routing_key.as_str().is_empty() {
        attributes.push(KeyValue::new(
            attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
            routing_key.as_str().to_owned(),
        ));
    }
}

/// A message to publish: exchange, routing key, payload, properties and options, as taken by
/// [`Channel::basic_publish`](lapin::Channel::basic_publish).
///
/// The payload is anything that derefs to bytes (`Vec<u8>`, `&'static [u8]`, `Arc<[u8]>`,
/// `bytes::Bytes`, ...). The properties' headers are kept; the trace context is added to them.
#[derive(Debug, Clone)]
pub struct Publish<P = Vec<u8>> {
    exchange: ShortString,
    routing_key: ShortString,
    payload: P,
    properties: BasicProperties,
    options: BasicPublishOptions,
    destination: String,
}

impl<P: AsRef<[u8]>> Publish<P> {
    /// A message for `exchange` (empty for the default exchange) with `routing_key`, default
    /// properties and options.
    pub fn new(exchange: ShortString, routing_key: ShortString, payload: P) -> Self {
        let destination = publish_destination(exchange.as_str(), routing_key.as_str());
        Self {
            exchange,
            routing_key,
            payload,
            properties: BasicProperties::default(),
            options: BasicPublishOptions::default(),
            destination,
        }
    }

    /// A message for a queue through the default exchange.
    pub fn to_queue(queue: ShortString, payload: P) -> Self {
        Self::new(ShortString::default(), queue, payload)
    }

    /// Sets the message properties (headers, message id, correlation id, delivery mode, ...).
    pub fn with_properties(mut self, properties: BasicProperties) -> Self {
        self.properties = properties;
        self
    }

    /// Sets the publish options (`mandatory`, `immediate`).
    pub fn with_options(mut self, options: BasicPublishOptions) -> Self {
        self.options = options;
        self
    }

    /// The exchange.
    pub fn exchange(&self) -> &ShortString {
        &self.exchange
    }

    /// The routing key.
    pub fn routing_key(&self) -> &ShortString {
        &self.routing_key
    }

    /// The payload.
    pub fn payload(&self) -> &P {
        &self.payload
    }

    /// The properties, with the trace context in their headers once the message went through
    /// the producer layer.
    pub fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// The publish options.
    pub fn options(&self) -> BasicPublishOptions {
        self.options
    }

    /// Takes the message apart: exchange, routing key, payload, properties, options.
    pub fn into_parts(
        self,
    ) -> (
        ShortString,
        ShortString,
        P,
        BasicProperties,
        BasicPublishOptions,
    ) {
        (
            self.exchange,
            self.routing_key,
            self.payload,
            self.properties,
            self.options,
        )
    }
}

impl<P: AsRef<[u8]>> OutgoingMessage for Publish<P> {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.destination)
    }

    fn with_headers_mut(&mut self, f: &mut dyn FnMut(&mut dyn Injector)) {
        // BasicProperties only hands out its headers by reference: copy, inject, put back.
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        f(&mut FieldTableInjector(&mut headers));
        self.properties = std::mem::take(&mut self.properties).with_headers(headers);
    }

    fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    fn conversation_id(&self) -> Option<&str> {
        self.properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.payload.as_ref().len())
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        routing_key_attribute(&self.routing_key, attributes);
    }
}

/// Whether `name` is what [`delivery_destination`] makes of `parts`, without building it.
fn joins_to(parts: [&str; 3], name: &str) -> bool {
    let mut rest = name;
    let mut first = true;
    for part in parts.iter().filter(|p| !p.is_empty()) {
        if !first {
            match rest.strip_prefix(':') {
                Some(r) => rest = r,
                None => return false,
            }
        }
        first = false;
        match rest.strip_prefix(part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    if first {
        name == DEFAULT_EXCHANGE
    } else {
        rest.is_empty()
    }
}

/// What deliveries of one queue with the same exchange and routing key share: built once and
/// shared (a reference count per delivery, no allocation), so the consume path does not build
/// the destination name of every message.
#[derive(Debug)]
pub(crate) struct Route {
    queue: Arc<str>,
    routing_key: Arc<str>,
    destination: Box<str>,
}

impl Route {
    pub(crate) fn new(queue: Arc<str>, exchange: &str, routing_key: &str) -> Self {
        Self {
            destination: delivery_destination(exchange, routing_key, &queue).into_boxed_str(),
            routing_key: Arc::from(routing_key),
            queue,
        }
    }

    /// Whether a delivery with `exchange` and `routing_key` has this route.
    pub(crate) fn fits(&self, exchange: &str, routing_key: &str) -> bool {
        *self.routing_key == *routing_key
            && joins_to([exchange, routing_key, &self.queue], &self.destination)
    }
}

/// A delivery from a queue, as handed to handlers by an
/// [`AmqpConsumer`](crate::AmqpConsumer).
///
/// Its destination is `{exchange}:{routing key}:{queue}`; the process span also carries the
/// routing key, the delivery tag, the message and correlation ids and the body size.
#[derive(Debug)]
pub struct AmqpDelivery {
    delivery: Delivery,
    route: Arc<Route>,
}

impl AmqpDelivery {
    /// Wraps a delivery received from `queue`.
    pub fn new(delivery: Delivery, queue: &str) -> Self {
        let route = Route::new(
            Arc::from(queue),
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
        );
        Self::with_route(delivery, Arc::new(route))
    }

    pub(crate) fn with_route(delivery: Delivery, route: Arc<Route>) -> Self {
        Self { delivery, route }
    }

    /// The lapin delivery.
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// Unwraps the lapin delivery.
    pub fn into_delivery(self) -> Delivery {
        self.delivery
    }

    /// The delivery's acker. A handler may settle the delivery itself through it: the consumer
    /// then does not settle it again (lapin's acker is single-use), and does not fail.
    pub fn acker(&self) -> &Acker {
        &self.delivery.acker
    }

    /// The payload.
    pub fn data(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The message properties.
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    /// The message headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.delivery.properties.headers().as_ref()
    }

    /// The queue the delivery came from.
    pub fn queue(&self) -> &str {
        &self.route.queue
    }

    /// Whether the broker delivered this message before.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }
}

impl IncomingMessage for AmqpDelivery {
    fn destination(&self) -> Destination<'_> {
        Destination::new(&self.route.destination)
    }

    fn with_headers(&self, f: &mut dyn FnMut(&dyn Extractor)) {
        match self.delivery.properties.headers() {
            Some(headers) => f(&FieldTableExtractor(headers)),
            None => f(&FieldTableExtractor(&FieldTable::default())),
        }
    }

    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| Cow::Borrowed(id.as_str()))
    }

    fn conversation_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    fn body_size(&self) -> Option<usize> {
        Some(self.delivery.data.len())
    }

    fn attributes(&self, attributes: &mut Vec<KeyValue>) {
        if !self.route.routing_key.is_empty() {
            attributes.push(KeyValue::new(
                attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                self.route.routing_key.clone(),
            ));
        }
        attributes.push(KeyValue::new(
            attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
            // Delivery tags count up from 1 per channel; i64 holds any real one.
            i64::try_from(self.delivery.delivery_tag).unwrap_or(i64::MAX),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_names() {
        assert_eq!(publish_destination("", ""), "amq.default");
        assert_eq!(publish_destination("", "orders"), "orders");
        assert_eq!(publish_destination("ex", ""), "ex");
        assert_eq!(publish_destination("ex", "rk"), "ex:rk");
        assert_eq!(delivery_destination("ex", "rk", "q"), "ex:rk:q");
        assert_eq!(delivery_destination("", "q", "q"), "q:q");
        assert_eq!(delivery_destination("ex", "", "q"), "ex:q");
        assert_eq!(delivery_destination("", "", ""), "amq.default");
    }

    #[test]
    fn routes_fit_what_they_name() {
        let cases = [
            ("ex", "rk", "q"),
            ("", "q", "q"),
            ("ex", "", "q"),
            ("", "", "q"),
            ("", "", ""),
            ("a:b", "c", "q"),
            ("a", "b:c", "q"),
        ];
        for (exchange, routing_key, queue) in cases {
            let route = Route::new(Arc::from(queue), exchange, routing_key);
            for (e, r, q) in cases {
                if q != queue {
                    continue;
                }
                let same = delivery_destination(e, r, q)
                    == delivery_destination(exchange, routing_key, queue)
                    && r == routing_key;
                assert_eq!(
                    route.fits(e, r),
                    same,
                    "{exchange:?} {routing_key:?} vs {e:?} {r:?}"
                );
            }
        }
        assert!(!Route::new(Arc::from("q"), "ex", "rk").fits("ex", "rk2"));
        assert!(!Route::new(Arc::from("q"), "ex", "rk").fits("ex2", "rk"));
        assert!(!Route::new(Arc::from("q"), "", "rk").fits("ex", "rk"));
    }

    #[test]
    fn publish_keeps_user_headers() {
        let mut headers = FieldTable::default();
        headers.insert("user".into(), lapin::types::AMQPValue::LongInt(3));
        let mut msg = Publish::to_queue("q".into(), b"hi".to_vec())
            .with_properties(BasicProperties::default().with_headers(headers));
        msg.with_headers_mut(&mut |inj| inj.set("traceparent", "tp".into()));
        let headers = msg.properties().headers().clone().unwrap_or_default();
        assert_eq!(headers.inner().len(), 2);
        assert_eq!(OutgoingMessage::destination(&msg).name, "q");
        assert_eq!(msg.body_size(), Some(2));
    }
}
