//! Assembling the attributes of spans and metrics.

use std::borrow::Cow;
use std::sync::Arc;

use opentelemetry::{KeyValue, Value};
use opentelemetry_semantic_conventions::attribute as attr;

use super::Instrumentation;
use crate::message::{Destination, IncomingMessage};
use crate::metrics::{MetricKind, MetricSet, SetKey};

/// A reference-counted attribute value: cloning it for the span and the metrics of one
/// operation costs no allocation.
pub(super) fn shared(text: &str) -> Value {
    Value::from(Arc::<str>::from(text))
}

/// The cached metric attribute set of an operation, and the values its span shares with it.
pub(super) struct MetricValues {
    pub(super) set: Arc<MetricSet>,
    /// `messaging.destination.name` for the span (the name, even when the metric says the
    /// template).
    pub(super) destination: Value,
    /// `messaging.consumer.group.name` and `messaging.destination.subscription.name`.
    pub(super) consumer: [Option<KeyValue>; 2],
}

impl Instrumentation {
    pub(super) fn destination_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        destination: &Destination<'_>,
        name: Value,
    ) {
        attributes.push(KeyValue::new(attr::MESSAGING_DESTINATION_NAME, name));
        if let Some(template) = destination.template {
            attributes.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_TEMPLATE,
                template.to_owned(),
            ));
        }
        if destination.temporary {
            attributes.push(KeyValue::new(attr::MESSAGING_DESTINATION_TEMPORARY, true));
        }
        if destination.anonymous {
            attributes.push(KeyValue::new(attr::MESSAGING_DESTINATION_ANONYMOUS, true));
        }
    }

    pub(super) fn operation_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        operation_type: &'static str,
        operation_name: &'static str,
    ) {
        attributes.extend(self.inner.common.iter().cloned());
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            operation_type,
        ));
        attributes.push(KeyValue::new(
            attr::MESSAGING_OPERATION_NAME,
            operation_name,
        ));
    }

    /// The cached metric attribute set of an operation, and the values its span shares with it:
    /// `messaging.destination.name` and the consumer group and subscription attributes (taken
    /// from the cached set, so a message on a known destination allocates none of them).
    pub(super) fn metric_values(
        &self,
        kind: MetricKind,
        operation_name: &'static str,
        destination: &Destination<'_>,
        [group, subscription]: [Option<&str>; 2],
    ) -> MetricValues {
        // Metrics must stay low-cardinality: prefer the template over a per-request name.
        let metric_name = destination.template.unwrap_or(destination.name);
        let key = SetKey {
            kind,
            operation: operation_name,
            destination: metric_name,
            group,
            subscription,
        };
        let set = self.inner.metrics.set(key, || {
            let mut attributes = Vec::with_capacity(self.inner.common.len() + 4);
            attributes.extend(self.inner.common.iter().cloned());
            attributes.push(KeyValue::new(
                attr::MESSAGING_OPERATION_NAME,
                operation_name,
            ));
            attributes.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_NAME,
                shared(metric_name),
            ));
            if let Some(group) = group {
                attributes.push(KeyValue::new(
                    attr::MESSAGING_CONSUMER_GROUP_NAME,
                    shared(group),
                ));
            }
            if let Some(subscription) = subscription {
                attributes.push(KeyValue::new(
                    attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                    shared(subscription),
                ));
            }
            attributes
        });
        let name = match destination.template {
            None => set.destination().clone(),
            Some(_) => shared(destination.name),
        };
        let consumer = [
            set.group()
                .map(|g| KeyValue::new(attr::MESSAGING_CONSUMER_GROUP_NAME, g.clone())),
            set.subscription()
                .map(|s| KeyValue::new(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, s.clone())),
        ];
        MetricValues {
            set,
            destination: name,
            consumer,
        }
    }

    pub(super) fn message_attributes<M: IncomingMessage + ?Sized>(
        &self,
        message: &M,
        attributes: &mut Vec<KeyValue>,
    ) {
        push_message_attributes(
            attributes,
            message.message_id(),
            message.conversation_id(),
            message.body_size(),
            message.partition_id(),
        );
        message.attributes(attributes);
    }
}

/// The per-message attributes both message traits describe.
pub(super) fn push_message_attributes(
    attributes: &mut Vec<KeyValue>,
    id: Option<Cow<'_, str>>,
    conversation_id: Option<&str>,
    body_size: Option<usize>,
    partition_id: Option<Cow<'_, str>>,
) {
    if let Some(id) = id {
        attributes.push(KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.into_owned()));
    }
    if let Some(id) = conversation_id {
        attributes.push(KeyValue::new(
            attr::MESSAGING_MESSAGE_CONVERSATION_ID,
            id.to_owned(),
        ));
    }
    if let Some(size) = body_size {
        attributes.push(KeyValue::new(
            attr::MESSAGING_MESSAGE_BODY_SIZE,
            i64::try_from(size).unwrap_or(i64::MAX),
        ));
    }
    if let Some(partition) = partition_id {
        attributes.push(KeyValue::new(
            attr::MESSAGING_DESTINATION_PARTITION_ID,
            partition.into_owned(),
        ));
    }
}
